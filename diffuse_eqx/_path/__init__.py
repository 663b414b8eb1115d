from .base import AbstractPath as AbstractPath
from .edm import EDM as EDM
from .flow import Flow as Flow
from .vp import VP as VP

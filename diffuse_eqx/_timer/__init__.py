from .base import AbstractTimer as AbstractTimer
from .custom import CustomTimer as CustomTimer
from .exponential import ExponentialTimer as ExponentialTimer
from .flux import FluxTimer as FluxTimer
from .karras import KarrasTimer as KarrasTimer
from .uniform import UniformTimer as UniformTimer

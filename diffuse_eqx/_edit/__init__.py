"""Image editing: inversion, SDEdit, RF-Inversion, FlowEdit and blended inpainting/outpainting."""

from .base import EditOutput as EditOutput
from .blended import Blended as Blended
from .flowedit import FlowEdit as FlowEdit
from .invert import InversionOutput as InversionOutput, invert as invert
from .noise import noise_to as noise_to
from .rf_inversion import Anchored as Anchored, RFInversion as RFInversion
from .sdedit import SDEdit as SDEdit

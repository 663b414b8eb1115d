from .base import (
    AbstractLinearOperator as AbstractLinearOperator,
    AbstractOperator as AbstractOperator,
    Measurement as Measurement,
    Signal as Signal,
    cg_tolerance as cg_tolerance,
    check_differentiable as check_differentiable,
    scaled_solve as scaled_solve,
)
from .blur import Blur as Blur, gaussian_kernel as gaussian_kernel, motion_kernel as motion_kernel
from .downsampling import Downsampling as Downsampling
from .inpainting import Inpainting as Inpainting, box_mask as box_mask, random_mask as random_mask
from .latent import LatentOperator as LatentOperator
from .matrix import Matrix as Matrix
from .mri import MRI as MRI, kspace_line_mask as kspace_line_mask
from .nonlinear import (
    FunctionOperator as FunctionOperator,
    PhaseRetrieval as PhaseRetrieval,
    Quantize as Quantize,
)

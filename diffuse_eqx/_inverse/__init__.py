from .base import AbstractPosteriorGuidance as AbstractPosteriorGuidance
from .daps import DAPS as DAPS
from .ddnm import DDNM as DDNM
from .dps import DPS as DPS
from .dps_gsg import DPSGSG as DPSGSG
from .mcgdiff import MCGdiff as MCGdiff
from .operators import (
    MRI as MRI,
    AbstractLinearOperator as AbstractLinearOperator,
    AbstractOperator as AbstractOperator,
    Blur as Blur,
    Downsampling as Downsampling,
    FunctionOperator as FunctionOperator,
    Inpainting as Inpainting,
    LatentOperator as LatentOperator,
    Matrix as Matrix,
    PhaseRetrieval as PhaseRetrieval,
    Quantize as Quantize,
    box_mask as box_mask,
    gaussian_kernel as gaussian_kernel,
    kspace_line_mask as kspace_line_mask,
    motion_kernel as motion_kernel,
    random_mask as random_mask,
)
from .oracle import ExactPosteriorGuidance as ExactPosteriorGuidance
from .pigdm import PiGDM as PiGDM
from .red_diff import RedDiff as RedDiff
from .repaint import RePaint as RePaint
from .resampling import (
    ess as ess,
    resample_if_needed as resample_if_needed,
    systematic_resample as systematic_resample,
)
from .smc_base import AbstractSMCSampler as AbstractSMCSampler, SMCOutput as SMCOutput
from .tds import TDS as TDS
from .tmpd import TMPD as TMPD

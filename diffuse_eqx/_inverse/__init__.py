from .guidance import (
    DDNM as DDNM,
    DPS as DPS,
    TMPD as TMPD,
    AbstractPosteriorGuidance as AbstractPosteriorGuidance,
    ExactPosteriorGuidance as ExactPosteriorGuidance,
    PiGDM as PiGDM,
)
from .operators import (
    MRI as MRI,
    AbstractLinearOperator as AbstractLinearOperator,
    AbstractOperator as AbstractOperator,
    Blur as Blur,
    Downsampling as Downsampling,
    Inpainting as Inpainting,
    LatentOperator as LatentOperator,
    Matrix as Matrix,
    box_mask as box_mask,
    gaussian_kernel as gaussian_kernel,
    kspace_line_mask as kspace_line_mask,
    motion_kernel as motion_kernel,
    random_mask as random_mask,
)
from .samplers import DAPS as DAPS, RedDiff as RedDiff, RePaint as RePaint
from .smc import (
    TDS as TDS,
    AbstractSMCSampler as AbstractSMCSampler,
    MCGdiff as MCGdiff,
    SMCOutput as SMCOutput,
    ess as ess,
    resample_if_needed as resample_if_needed,
    systematic_resample as systematic_resample,
)

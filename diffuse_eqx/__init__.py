"""diffuse_eqx: modular sampling from pretrained diffusion and flow-matching models (JAX + Equinox)."""

from ._denoiser import (
    Denoiser as Denoiser,
    DenoiserOutput as DenoiserOutput,
    integrate as integrate,
    particle_keys as particle_keys,
)
from ._edit import (
    Anchored as Anchored,
    Blended as Blended,
    EditOutput as EditOutput,
    FlowEdit as FlowEdit,
    InversionOutput as InversionOutput,
    RFInversion as RFInversion,
    SDEdit as SDEdit,
    invert as invert,
    noise_to as noise_to,
)
from ._guidance import (
    APG as APG,
    CFG as CFG,
    AbstractConditional as AbstractConditional,
    AbstractGuidance as AbstractGuidance,
    AutoGuidance as AutoGuidance,
    CFGPlusPlus as CFGPlusPlus,
    ConditionalNetwork as ConditionalNetwork,
    GuidanceInterval as GuidanceInterval,
    IntervalConditional as IntervalConditional,
    PredictorPair as PredictorPair,
)
from ._integrator import (
    DDIM as DDIM,
    DEIS as DEIS,
    IPNDM as IPNDM,
    AbstractIntegrator as AbstractIntegrator,
    AbstractMultistep as AbstractMultistep,
    AbstractSingleStep as AbstractSingleStep,
    Churn as Churn,
    DiffraxAdaptive as DiffraxAdaptive,
    DiffraxIntegrator as DiffraxIntegrator,
    DiffraxSDE as DiffraxSDE,
    DPMpp2M as DPMpp2M,
    DPMpp2MSDE as DPMpp2MSDE,
    DPMpp2S as DPMpp2S,
    DPMpp3M as DPMpp3M,
    DPMpp3MSDE as DPMpp3MSDE,
    Euler as Euler,
    EulerAncestral as EulerAncestral,
    EulerAncestralRF as EulerAncestralRF,
    EulerMaruyama as EulerMaruyama,
    Heun as Heun,
    History as History,
    IntegratorState as IntegratorState,
    Shared as Shared,
    StepCoefficients as StepCoefficients,
    UniPC as UniPC,
    ancestral_step as ancestral_step,
    data_step as data_step,
    evaluate as evaluate,
    evaluate_and_data_step as evaluate_and_data_step,
    noise as noise,
    step_coefficients as step_coefficients,
)
from ._inverse import (
    DAPS as DAPS,
    DDNM as DDNM,
    DPS as DPS,
    MRI as MRI,
    TDS as TDS,
    TMPD as TMPD,
    AbstractLinearOperator as AbstractLinearOperator,
    AbstractOperator as AbstractOperator,
    AbstractPosteriorGuidance as AbstractPosteriorGuidance,
    AbstractSMCSampler as AbstractSMCSampler,
    Blur as Blur,
    Downsampling as Downsampling,
    ExactPosteriorGuidance as ExactPosteriorGuidance,
    Inpainting as Inpainting,
    LatentOperator as LatentOperator,
    Matrix as Matrix,
    MCGdiff as MCGdiff,
    PiGDM as PiGDM,
    RedDiff as RedDiff,
    RePaint as RePaint,
    SMCOutput as SMCOutput,
    box_mask as box_mask,
    ess as ess,
    gaussian_kernel as gaussian_kernel,
    kspace_line_mask as kspace_line_mask,
    motion_kernel as motion_kernel,
    random_mask as random_mask,
    resample_if_needed as resample_if_needed,
    systematic_resample as systematic_resample,
)
from ._metrics import frechet_distance as frechet_distance, sliced_wasserstein as sliced_wasserstein
from ._path import EDM as EDM, VP as VP, AbstractPath as AbstractPath, Flow as Flow
from ._path.edm import VE as VE
from ._predictor import (
    AbstractPredictor as AbstractPredictor,
    Prediction as Prediction,
    Predictor as Predictor,
)
from ._targets import (
    GaussianMixture as GaussianMixture,
    GaussianMixtureNetwork as GaussianMixtureNetwork,
)
from ._timer import (
    AbstractTimer as AbstractTimer,
    BetaTimer as BetaTimer,
    CustomTimer as CustomTimer,
    ExponentialTimer as ExponentialTimer,
    FluxTimer as FluxTimer,
    KarrasTimer as KarrasTimer,
    LogSNRTimer as LogSNRTimer,
    UniformTimer as UniformTimer,
    fit_timer as fit_timer,
    timer_error as timer_error,
)


__version__ = "0.1.0"

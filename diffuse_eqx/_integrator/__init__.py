from .base import (
    AbstractIntegrator as AbstractIntegrator,
    AbstractMultistep as AbstractMultistep,
    AbstractSingleStep as AbstractSingleStep,
    History as History,
    IntegratorState as IntegratorState,
    Shared as Shared,
    StepCoefficients as StepCoefficients,
    data_step as data_step,
    evaluate as evaluate,
    evaluate_and_data_step as evaluate_and_data_step,
    noise as noise,
    step_coefficients as step_coefficients,
)
from .churn import Churn as Churn
from .ddim import DDIM as DDIM, ancestral_step as ancestral_step
from .deis import DEIS as DEIS
from .diffrax import (
    DiffraxAdaptive as DiffraxAdaptive,
    DiffraxIntegrator as DiffraxIntegrator,
    DiffraxSDE as DiffraxSDE,
)
from .dpmpp_2m import DPMpp2M as DPMpp2M, multistep_data as multistep_data
from .dpmpp_2m_sde import DPMpp2MSDE as DPMpp2MSDE
from .dpmpp_2s import DPMpp2S as DPMpp2S
from .dpmpp_3m import DPMpp3M as DPMpp3M, multistep_data_3m as multistep_data_3m
from .dpmpp_3m_sde import DPMpp3MSDE as DPMpp3MSDE
from .euler import Euler as Euler
from .euler_ancestral import EulerAncestral as EulerAncestral
from .euler_ancestral_rf import EulerAncestralRF as EulerAncestralRF
from .euler_maruyama import EulerMaruyama as EulerMaruyama
from .heun import Heun as Heun
from .ipndm import IPNDM as IPNDM
from .unipc import UniPC as UniPC

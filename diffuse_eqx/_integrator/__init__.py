from .base import (
    AbstractIntegrator as AbstractIntegrator,
    IntegratorState as IntegratorState,
    data_step as data_step,
    evaluate as evaluate,
)
from .churn import Churn as Churn
from .ddim import DDIM as DDIM
from .diffrax import (
    DiffraxAdaptive as DiffraxAdaptive,
    DiffraxIntegrator as DiffraxIntegrator,
    DiffraxSDE as DiffraxSDE,
)
from .dpmpp_2m import DPMpp2M as DPMpp2M
from .dpmpp_2m_sde import DPMpp2MSDE as DPMpp2MSDE
from .dpmpp_2s import DPMpp2S as DPMpp2S
from .euler import Euler as Euler
from .euler_ancestral import EulerAncestral as EulerAncestral
from .euler_maruyama import EulerMaruyama as EulerMaruyama
from .heun import Heun as Heun

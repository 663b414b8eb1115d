from .base import AbstractTimer as AbstractTimer
from .beta import BetaTimer as BetaTimer
from .custom import CustomTimer as CustomTimer
from .exponential import ExponentialTimer as ExponentialTimer
from .fit import fit_timer as fit_timer, timer_error as timer_error
from .flux import FluxTimer as FluxTimer
from .karras import KarrasTimer as KarrasTimer
from .logsnr import LogSNRTimer as LogSNRTimer
from .uniform import UniformTimer as UniformTimer

from .apg import APG as APG
from .autoguidance import AutoGuidance as AutoGuidance
from .base import (
    AbstractConditional as AbstractConditional,
    ConditionalNetwork as ConditionalNetwork,
    PredictorPair as PredictorPair,
)
from .cfg import CFG as CFG
from .cfg_plus_plus import CFGPlusPlus as CFGPlusPlus
from .interval import GuidanceInterval as GuidanceInterval

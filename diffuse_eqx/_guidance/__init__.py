from .apg import APG as APG
from .base import (
    AbstractConditional as AbstractConditional,
    AbstractGuidance as AbstractGuidance,
    ConditionalNetwork as ConditionalNetwork,
    IntervalConditional as IntervalConditional,
    PredictorPair as PredictorPair,
)
from .cfg import CFG as CFG, AutoGuidance as AutoGuidance, GuidanceInterval as GuidanceInterval
from .cfg_plus_plus import CFGPlusPlus as CFGPlusPlus

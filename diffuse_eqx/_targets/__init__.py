from .gaussian_mixture import (
    GaussianMixture as GaussianMixture,
    GaussianMixtureNetwork as GaussianMixtureNetwork,
)
from .importance import (
    ImportanceReference as ImportanceReference,
    importance_posterior as importance_posterior,
)

from .gaussian_mixture import (
    GaussianMixture as GaussianMixture,
    GaussianMixtureNetwork as GaussianMixtureNetwork,
)

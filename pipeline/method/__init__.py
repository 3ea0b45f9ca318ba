"""The paper's method as numerics with no files and no Ray: centring and unit norm, the 1-D-code
autoencoder, the parametric families that name templates."""

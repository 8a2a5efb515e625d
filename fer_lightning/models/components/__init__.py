"""Parts of the models: heads, early and late fusion, layers fitted on training features (z-score, PCA, block
scale), metrics and optimisation settings."""

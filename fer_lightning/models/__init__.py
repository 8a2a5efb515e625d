"""LightningModules: the shared classifier base and one module per model."""

"""Lightning wrappers: LightningModules, DataModules, callbacks, loggers, hardware."""

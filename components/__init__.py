"""KFP components: one thin, typed wrapper per pipeline stage around ``testprio.stages``."""

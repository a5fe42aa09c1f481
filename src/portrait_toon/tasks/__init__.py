"""What the Hydra entry points call: one function per task, taking a composed config."""

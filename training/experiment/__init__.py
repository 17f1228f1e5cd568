"""The experiment runner: subjects x setups, stage by stage (regularise, train, generate, evaluate), resumable."""

from subjectgen_training.experiment.config import ExperimentConfig, load_experiment_config, shipped_configs
from subjectgen_training.experiment.runner import run_experiment

__all__ = ["ExperimentConfig", "load_experiment_config", "run_experiment", "shipped_configs"]

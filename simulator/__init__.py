"""Local openEO backend simulator (API 1.2 batch-job subset) for tests and benchmarks."""
from simulator.config import SimulatorConfig
from simulator.runner import Simulator, start_simulator

__all__ = ["SimulatorConfig", "Simulator", "start_simulator"]

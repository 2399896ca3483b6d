"""agentlab: continual-learning agents composed of a backbone, plasticity modules and memory modules."""

from agentlab.agent import Agent
from agentlab.data import Batch, Split
from agentlab.task import LazyStream, Task, TaskStream

__all__ = ["Agent", "Batch", "LazyStream", "Split", "Task", "TaskStream"]
__version__ = "0.1.0"

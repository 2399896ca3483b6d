"""The Differentiable Neural Computer (Graves et al., Nature 2016), one mechanism per file.

    content.py     content addressing: cosine similarity, strength-scaled softmax
    usage.py       usage with free gates
    allocation.py  sort-based allocation weights (sequential over write heads)
    linkage.py     precedence, temporal link matrix, forward/backward weights
    access.py      interface vector, write weighting, erase/add, read modes
    controller.py  LSTM or feed-forward controller
    core.py        the DNC MemoryModule (state in, state out)
    modules.py     its settings and registry entry as memory `dnc` (backbones `dnc`, `lstm-seq`: agentlab.backbones.sequence)
"""

from agentlab.memory.dnc.core import DNC, DNCState

__all__ = ["DNC", "DNCState"]

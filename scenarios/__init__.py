"""Task streams: Avalanche-built benchmarks, few-shot episodes, algorithmic sequences, environments, people."""

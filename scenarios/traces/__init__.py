"""Step-by-step problem-solving traces: the JSONL format, its schema check, a simulator, tensor encoding."""

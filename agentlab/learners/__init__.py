"""Update rules: fine-tuning, joint training, experience replay (and, in other packages, episode and RL learners)."""

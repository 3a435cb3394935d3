"""The sampler math over plain tensors: schedules, the single chain, EDICT's coupled chains, and gradients
through them."""

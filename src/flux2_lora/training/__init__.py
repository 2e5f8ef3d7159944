"""Everything that needs torch: model loading and LoRA, the flow objective, batches, the trainer, its
checkpoints, samples, trackers, export, pre-flight and the meta-tensor memory trace. Nothing outside
this package (and the CLI commands that start it) imports torch.
"""

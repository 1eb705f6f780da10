"""Training: dataset preparation (``prepare``), the clip reader (``data``) and the training loop (``run``).

``animate train prepare`` turns a folder of videos into per-clip shards with our own pose / body / flow stack;
``animate.train.data.ClipDataset`` reads them back as the tensors ``AnimationPipeline`` takes.
"""

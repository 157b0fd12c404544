"""Train (or seed) the PyTorch reference of a twin and compute its golden samples."""

from __future__ import annotations

import numpy as np

from deploybench.batch import Batch
from deploybench.golden import Golden
from deploybench.zoo.spec import ModelSpec


def train_reference(spec: ModelSpec, progress: callable | None = None):  # noqa: ANN201
    """The reference PyTorch model (trained, or seeded when the spec has no training), in eval
    mode, and its golden samples on the held-out split."""
    import torch

    seed = spec.training.seed if spec.training else 0
    torch.manual_seed(seed)
    np.random.seed(seed)
    split = spec.data()
    model = spec.build_torch()
    if spec.training is not None:
        cfg = spec.training
        generator = torch.Generator().manual_seed(cfg.seed)
        x = spec.batch(split.x_train)
        y = torch.from_numpy(split.y_train)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
        loss_fn = torch.nn.CrossEntropyLoss()
        model.train()
        for epoch in range(cfg.epochs):
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), cfg.batch_size):
                batch = order[start : start + cfg.batch_size].numpy()
                optimizer.zero_grad()
                loss_fn(model(*torch_inputs(x.rows(batch))), y[batch]).backward()
                optimizer.step()
            if progress:
                progress(epoch + 1, cfg.epochs)
    model.eval()
    golden_inputs = spec.batch(split.x_test)
    with torch.no_grad():
        # row by row where rows differ in length, as requests carry them
        outputs = np.concatenate([
            model(*torch_inputs(golden_inputs.rows(slice(i, i + 1)))).numpy()
            for i in range(len(golden_inputs))
        ]) if golden_inputs.variable else model(*torch_inputs(golden_inputs)).numpy()
    return model, split, Golden(golden_inputs, split.y_test, outputs)


def torch_inputs(batch: Batch) -> list:
    """A batch's arrays as torch tensors, in the model's input order."""
    import torch

    return [torch.from_numpy(np.ascontiguousarray(a)) for a in batch.arrays.values()]

"""One spec, two twins: a PyTorch module and a Keras model built from the same layer list.

Conventions every twin shares, so weights copy across without surprises:
- the public input is channels-last (NHWC, or (N, features) for flat inputs); the PyTorch
  twin transposes to NCHW itself, so every artifact has the same public signature;
- Flatten flattens in channels-last order in both twins (PyTorch permutes back to NHWC
  first), so a Dense layer after it takes the same weights in both;
- BatchNorm epsilon is explicit (Keras defaults to 1e-3, PyTorch to 1e-5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from deploybench.batch import Batch
from deploybench.manifest import TensorSpec, signature_of

if TYPE_CHECKING:
    import keras
    import torch


@dataclass(frozen=True)
class Dense:
    units: int
    activation: str | None = None


@dataclass(frozen=True)
class Conv2D:
    filters: int
    kernel_size: int = 3
    activation: str | None = None  # padding is always "same", stride 1


@dataclass(frozen=True)
class MaxPool2D:
    pool_size: int = 2


@dataclass(frozen=True)
class Flatten:
    pass


@dataclass(frozen=True)
class Dropout:
    rate: float  # active in training only


@dataclass(frozen=True)
class BatchNorm:
    epsilon: float = 1e-3


Layer = Dense | Conv2D | MaxPool2D | Flatten | Dropout | BatchNorm


@dataclass(frozen=True)
class Input:
    """One public input of a model. `shape` is without the batch axis and gives each axis'
    largest size; the axes in `dynamic` take any size from 1 to that (a text model's sequence).
    Integer inputs take values in [0, high) (a vocabulary's size, 2 for a mask)."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"  # float32 | int32
    dynamic: tuple[int, ...] = ()  # axes of `shape` (0 = the first after the batch)
    high: int | None = None


@dataclass(frozen=True)
class Split:
    """A data set split into training and held-out parts (inputs already public-shaped: an
    array for a one-input model, a Batch for one with several inputs)."""

    x_train: np.ndarray | Batch
    y_train: np.ndarray
    x_test: np.ndarray | Batch
    y_test: np.ndarray


@dataclass(frozen=True)
class Reference:
    """What the export stage starts from: each framework's model (None where a model has no
    such side), the inputs the int8 variants calibrate on, and the golden samples (held-out
    inputs, labels, and the reference model's own outputs on them)."""

    torch_model: Any
    keras_model: Any
    calibration: Batch
    golden: Any  # deploybench.golden.Golden


@dataclass(frozen=True)
class Training:
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class ModelSpec:
    """Everything the kit needs to know about one model, declared in one zoo module."""

    name: str
    description: str
    input_shape: tuple[int, ...]  # public shape without the batch axis, channels-last
    num_classes: int
    layers: Sequence[Layer]
    data: Callable[[], Split]
    training: Training | None = field(default_factory=Training)  # None: weights are seeded
    input_name: str = "pixels"
    output_name: str = "logits"
    min_accuracy: float | None = 0.95  # None where accuracy has no meaning (seeded weights)
    max_rows: int = 64  # largest batch one request may carry
    # why an artifact fails the parity gate, where the cause is known (a runtime's bug): added
    # to the refused artifact's reason in the manifest, the gate itself unchanged
    known_causes: Mapping[str, str] = field(default_factory=dict)

    @property
    def frameworks(self) -> tuple[str, ...]:
        """The frameworks the model has a side in: a zoo model is a twin, in both."""
        return ("pytorch", "tensorflow")

    @property
    def gate_by_agreement(self) -> bool:
        """Quantized variants judged by top-1 agreement with the reference (accuracy means
        nothing: seeded weights) rather than by accuracy drop."""
        return self.min_accuracy is None

    @property
    def source(self) -> str:
        """Where the model comes from: the zoo (a module of this package) or a user's import."""
        return "zoo"

    @property
    def every_format_optional(self) -> bool:
        """Whether any format may fail (a row with its reason) while the others publish: a
        zoo model's core formats must all work (a failure is the kit's bug); a user's model
        may use what a converter cannot take."""
        return self.source != "zoo"

    def golden_split(self) -> str:
        """How the golden samples were chosen, as the manifest says it."""
        if self.gate_by_agreement:
            return "held-out; labels are the reference's own top-1 (seeded weights)"
        return "held-out 20%, stratified, seed 0"

    def fp32_tolerance(self, reference_outputs: np.ndarray) -> float:
        """The most an fp32 artifact's outputs may differ from the reference's (absolute: a
        zoo model's outputs are logits of a known scale)."""
        from deploybench.manifest import FP32_TOLERANCE

        return FP32_TOLERANCE

    def reference(self, progress: Callable[[str], None]) -> Reference:
        """Train (or seed) the PyTorch twin, carry its weights to the Keras twin, and compute
        the golden samples on the held-out split."""
        from deploybench.zoo.train import train_reference

        torch_model, split, golden = train_reference(
            self, lambda done, total: progress(f"training epoch {done}/{total}"))
        progress("building the Keras twin")
        keras_model = self.build_keras()
        self.copy_weights(torch_model, keras_model)
        return Reference(torch_model, keras_model, self.batch(split.x_train), golden)

    def data_provenance(self) -> dict[str, Any] | None:
        """Where a data set built at export time came from (None: it ships in a package)."""
        return None

    def public_inputs(self) -> tuple[Input, ...]:
        """The model's inputs, in the order its artifacts take them."""
        return (Input(self.input_name, tuple(self.input_shape)),)

    def tensor_specs(self) -> list[TensorSpec]:
        """The public inputs as the manifest records them."""
        return [TensorSpec(i.name, [None, *i.shape], i.dtype, list(i.dynamic), i.high)
                for i in self.public_inputs()]

    def signature(self) -> dict[str, Any]:
        """What a server checks a request against (deploybench.manifest.signature_of)."""
        return signature_of(self.tensor_specs(), self.output_name, self.max_rows)

    def batch(self, x: np.ndarray | Batch) -> Batch:
        """Inputs as a Batch (a one-input model's data sets are plain arrays)."""
        return x if isinstance(x, Batch) else Batch.single(self.input_name, x)

    def build_torch(self) -> torch.nn.Module:
        return _build_torch(self)

    def build_keras(self) -> keras.Model:
        return _build_keras(self)

    def copy_weights(self, torch_model: torch.nn.Module, keras_model: keras.Model) -> None:
        _copy_weights(self, torch_model, keras_model)


_ACTIVATIONS = {None: None, "relu": "relu"}


def _build_torch(spec: ModelSpec) -> torch.nn.Module:
    import torch
    from torch import nn

    class ToChannelsFirst(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.permute(0, 3, 1, 2)

    class ChannelsLastFlatten(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dim() == 4:
                x = x.permute(0, 2, 3, 1)
            return torch.flatten(x, 1)

    modules: list[nn.Module] = []
    shape = list(spec.input_shape)
    if len(shape) == 3:
        modules.append(ToChannelsFirst())
    for layer in spec.layers:
        match layer:
            case Dense():
                modules.append(nn.Linear(shape[-1], layer.units))
                shape = [layer.units]
            case Conv2D():
                modules.append(
                    nn.Conv2d(shape[-1], layer.filters, layer.kernel_size, padding="same")
                )
                shape = [shape[0], shape[1], layer.filters]
            case MaxPool2D():
                modules.append(nn.MaxPool2d(layer.pool_size))
                shape = [shape[0] // layer.pool_size, shape[1] // layer.pool_size, shape[2]]
            case Flatten():
                modules.append(ChannelsLastFlatten())
                shape = [int(np.prod(shape))]
            case Dropout():
                modules.append(nn.Dropout(layer.rate))
            case BatchNorm():
                features = shape[-1]
                norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
                modules.append(norm(features, eps=layer.epsilon))
        if getattr(layer, "activation", None) == "relu":
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def _build_keras(spec: ModelSpec) -> keras.Model:
    import keras

    layers: list[Any] = [keras.Input(shape=spec.input_shape, name=spec.input_name)]
    for index, layer in enumerate(spec.layers):
        name = f"{type(layer).__name__.lower()}_{index}"
        match layer:
            case Dense():
                layers.append(keras.layers.Dense(layer.units, layer.activation, name=name))
            case Conv2D():
                layers.append(
                    keras.layers.Conv2D(
                        layer.filters, layer.kernel_size, padding="same",
                        activation=layer.activation, name=name,
                    )
                )
            case MaxPool2D():
                layers.append(keras.layers.MaxPooling2D(layer.pool_size, name=name))
            case Flatten():
                layers.append(keras.layers.Flatten(name=name))
            case Dropout():
                layers.append(keras.layers.Dropout(layer.rate, name=name))
            case BatchNorm():
                layers.append(keras.layers.BatchNormalization(epsilon=layer.epsilon, name=name))
    return keras.Sequential(layers, name=spec.name.replace("-", "_"))


def _copy_weights(spec: ModelSpec, torch_model: torch.nn.Module, keras_model: keras.Model) -> None:
    """Copy trained PyTorch weights into the Keras twin, layer by layer."""
    from torch import nn

    torch_layers = [
        m for m in torch_model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d | nn.BatchNorm1d | nn.BatchNorm2d)
    ]
    keras_layers = [layer for layer in keras_model.layers if layer.weights]
    if len(torch_layers) != len(keras_layers):
        raise ValueError(
            f"{spec.name}: {len(torch_layers)} PyTorch layers with weights, "
            f"{len(keras_layers)} Keras layers"
        )
    for source, target in zip(torch_layers, keras_layers, strict=True):
        target.set_weights(torch_to_keras_weights(source))


def torch_to_keras_weights(module: torch.nn.Module) -> list[np.ndarray]:
    """One PyTorch layer's weights in Keras' layout and order."""
    from torch import nn

    def host(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().cpu().numpy()

    if isinstance(module, nn.Linear):
        return [host(module.weight).T, host(module.bias)]  # (out, in) -> (in, out)
    if isinstance(module, nn.Conv2d):
        if module.groups == module.in_channels and module.groups > 1:
            # depthwise: (C*mult, 1, kh, kw) -> (kh, kw, C, mult)
            weight = host(module.weight)
            channels = module.in_channels
            mult = weight.shape[0] // channels
            kernel = weight.reshape(channels, mult, *weight.shape[2:]).transpose(2, 3, 0, 1)
        else:
            kernel = host(module.weight).transpose(2, 3, 1, 0)  # OIHW -> HWIO
        return [kernel] if module.bias is None else [kernel, host(module.bias)]
    if isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d):
        # Keras order: gamma, beta, moving_mean, moving_variance
        return [host(module.weight), host(module.bias),
                host(module.running_mean), host(module.running_var)]
    raise TypeError(f"no Keras layout known for {type(module).__name__}")

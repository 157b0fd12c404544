"""mobilenet-v2: MobileNetV2 (alpha 1.0, 224x224 RGB, 1000 classes) with seeded weights.

A realistic image model for the serving and edge comparisons; nothing is downloaded.

Twins. The Keras twin is `keras.applications.MobileNetV2(weights=None)` itself, the architecture
Keras ships; the PyTorch twin is written here layer for layer after it (torchvision has no CPU
build on these machines). Each PyTorch layer is known by the name of its Keras layer, so weights
are copied by name, not by position. Porting details:
- BatchNorm epsilon 1e-3 on both sides (Keras' value; PyTorch defaults to 1e-5). BatchNorm is
  ported, not folded: both twins carry it, and the TFLite converter folds it by itself.
- TensorFlow's "same" padding at stride 2 pads only bottom/right (by one, on even sizes), PyTorch
  pads symmetrically: the PyTorch twin pads (0, 1, 0, 1) explicitly before every stride-2
  convolution, which is what keras.applications' ZeroPadding2D(`correct_pad`) and its stem's
  "same" convolution do.
- Depthwise kernels: (C, 1, 3, 3) -> (3, 3, C, 1), by `torch_to_keras_weights`.
- Global average pooling, then the classifier: no flatten order to get wrong.

Signature, every artifact (the full-int8 TFLite variant included): input `image`, float32
(N, 224, 224, 3), channels-last RGB pixels / 255 in [0, 1] (the only preprocessing; the stem's
BatchNorm centres them, so no scaling layer sits in front of the network, and the full-int8
variant's first op quantizes them losslessly, to exactly pixel - 128); output `logits`, float32
(N, 1000), no softmax.

Weights (seeded, generator seed 0; no training). Random weights alone give a model unlike a
trained one: its top-1 class wins by a hair (median top-1/top-2 gap ~0.2 logit standard
deviations), so full int8 kept the top-1 of only about half the images. So the seeded model is
made to behave like a trained one, deterministically:
- convolutions: He-normal over each filter's real fan-out;
- BatchNorm: random gamma and beta by role (BN_SEEDING), running mean and variance measured on a
  fixed set of synthetic "prototype" images, so they are far from 0 and 1 (parity really
  exercises BatchNorm) while activations stay in range through all 17 blocks;
- classifier: 64 of the 1000 classes are imprinted with the pooled features of the 64 prototype
  scenes (weight imprinting: a class's weights are its prototype's centred, normalised features),
  the other 936 are random and weaker; all rows are orthogonal to the mean feature (no logit
  offset common to every image), scaled so a prototype scores about TOP_LOGIT. A new picture of a
  scene then wins by a clear margin (golden set: top-1 logit ~10, median gap to the runner-up
  ~2), as in a trained classifier, and top-1 agreement measures what it does for a trained model.
Values derived from the calibration pass are rounded to bfloat16 precision, so tiny run-to-run
differences (thread counts) do not change the weights; the random ones are plain float32.

Images (synthetic, deterministic). Each of SCENES scenes has its own parameters: a 1/f^a colour
noise texture (a from rough to smooth, channels mixed by a colour matrix) and a few flat-coloured
rectangles and discs. Each picture of a scene renews half its texture (TEXTURE_CHANGE) and moves
the shapes a little; it is stretched to [0, 1] and rounded to 8-bit levels like a decoded photo.
Picture 0 of every scene is its prototype (weights only), picture 1 is held out (the 64 golden
samples), pictures 2 and 3 form the "training" split (128 images: full-int8 calibration; nothing
is trained).

Labels. Seeded weights have no accuracy: the golden labels are the reference's own top-1 classes,
so the "accuracy" the kit reports for this model is top-1 agreement with the PyTorch reference
(the reference scores 1.0 by construction), and export judges its quantized variants by that
agreement. The training split is unlabelled (-1).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np

from deploybench.zoo.spec import ModelSpec, Split, torch_to_keras_weights

if TYPE_CHECKING:
    import keras
    import torch

IMAGE_SIZE = 224
CHANNELS = 3
NUM_CLASSES = 1000
LAST_CHANNELS = 1280
BN_EPSILON = 1e-3  # Keras' value, set on both twins

SEED = 0  # weights
SCENES = 64  # synthetic scenes = imprinted classes = golden samples (one picture each)
PROTOTYPE, GOLDEN, TRAIN = (0,), (1,), (2, 3)  # which pictures of each scene go where
SCENE_SEED, PICTURE_SEED = 7, 8
TEXTURE_CHANGE = 0.5  # how much of a picture's texture is new (the rest is the scene's own)
# BatchNorm gamma (uniform range) and beta (normal mean, std) by what follows the layer. As in a
# trained network, a residual branch ends in a small gamma (cf. the zero-init-gamma practice) and
# units before ReLU6 are mostly active (beta ~ +1 standard deviation). With U(0.5, 1.5) and
# N(0, 0.25) everywhere the seeded network is chaotic: an fp32 rounding difference doubles every
# three blocks or so, to ~3e-4 on the logits, and int8 noise swamps what tells images apart.
BN_SEEDING = {
    "relu6": ((0.5, 1.5), (1.0, 0.25)),  # bn_Conv1, expand_BN, depthwise_BN, Conv_1_bn
    "linear": ((0.5, 1.5), (0.0, 0.25)),  # project_BN of a block without residual
    "residual": ((0.05, 0.3), (0.0, 0.25)),  # project_BN of a block with residual
}
BACKGROUND = 0.3  # norm of a random (not imprinted) class row, relative to an imprinted one
TOP_LOGIT = 16.0  # median logit of an imprinted class on its own prototype
BIAS_STD = 0.1

# (expansion, output channels, repeats, first stride): the MobileNetV2 paper's table 2, as
# keras.applications builds it with alpha 1.0 (block ids 0..16)
BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32


# --- synthetic images -----------------------------------------------------------------------


def synthetic_images(
    pictures: tuple[int, ...], scenes: int = SCENES, size: int = IMAGE_SIZE
) -> np.ndarray:
    """Pictures `pictures` of scenes 0..scenes-1 (scene-major), float32 (N, size, size, 3) in
    [0, 1] on 8-bit levels (k / 255). Deterministic."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radius = np.hypot(fy, fx)
    radius[0, 0] = 1.0
    yy, xx = np.mgrid[0:size, 0:size]
    images = np.empty((scenes * len(pictures), size, size, CHANNELS), dtype=np.float32)
    for scene in range(scenes):
        rng = np.random.default_rng([SCENE_SEED, scene])
        slope = rng.uniform(0.8, 2.2)  # amplitude ~ 1/f^slope: rough texture .. smooth field
        mixing = np.eye(CHANNELS) + rng.normal(scale=0.6, size=(CHANNELS, CHANNELS))
        offset = rng.normal(size=CHANNELS)
        shapes = [
            (rng.random() < 0.5, rng.normal(scale=1.5, size=CHANNELS),
             rng.integers(0, size, 2), rng.integers(size // 16, size // 3, 2))
            for _ in range(int(rng.integers(1, 6)))
        ]
        base = rng.normal(size=(2, CHANNELS, *radius.shape))
        for p, picture in enumerate(pictures):
            rng = np.random.default_rng([PICTURE_SEED, scene, picture])
            fresh = rng.normal(size=(2, CHANNELS, *radius.shape))
            noise = np.sqrt(1 - TEXTURE_CHANGE**2) * base + TEXTURE_CHANGE * fresh
            spectrum = (noise[0] + 1j * noise[1]) / radius**slope
            spectrum[:, 0, 0] = 0.0
            texture = np.fft.irfft2(spectrum, s=(size, size)).transpose(1, 2, 0)
            image = texture / (texture.std() + 1e-12) @ mixing.T + offset
            for is_rectangle, colour, centre, half in shapes:
                cy, cx = centre + rng.integers(-12, 13, 2)
                if is_rectangle:
                    mask = (np.abs(yy - cy) < half[0]) & (np.abs(xx - cx) < half[1])
                else:
                    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < half[0] ** 2
                image[mask] = 0.3 * image[mask] + colour + rng.normal(scale=0.1, size=CHANNELS)
            low, high = np.percentile(image, [1.5, 98.5])
            image = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
            images[scene * len(pictures) + p] = np.round(image * 255.0) / 255.0
    return images


def reference_top1(images: np.ndarray) -> np.ndarray:
    """The seeded reference's top-1 class per image: the golden 'labels' of this model."""
    import torch

    model = build_torch_model()
    with torch.no_grad():
        return np.argmax(model(torch.from_numpy(images)).numpy(), axis=1).astype(np.int64)


def data() -> Split:
    """The synthetic split (see the module docstring): training pictures unlabelled (-1),
    held-out pictures labelled with the reference's own top-1 classes."""
    x_train = synthetic_images(TRAIN)
    x_test = synthetic_images(GOLDEN)
    y_train = np.full(len(x_train), -1, dtype=np.int64)
    return Split(x_train, y_train, x_test, reference_top1(x_test))


# --- the PyTorch twin ----------------------------------------------------------------------


@functools.cache
def _torch_classes():  # noqa: ANN202 - an nn.Module subclass, made once torch is imported
    import torch.nn.functional as F
    from torch import nn

    def bn(channels: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(channels, eps=BN_EPSILON)

    class InvertedResidual(nn.Module):
        """keras.applications' `_inverted_res_block`: expand 1x1 (unless expansion is 1),
        depthwise 3x3, project 1x1 (linear), residual when shape is kept."""

        def __init__(
            self, prefix: str, in_channels: int, out_channels: int, stride: int, expansion: int
        ) -> None:
            super().__init__()
            self.prefix = prefix
            hidden = in_channels * expansion
            self.expand: nn.Module | None = None
            self.expand_BN: nn.Module | None = None
            if expansion != 1:
                self.expand = nn.Conv2d(in_channels, hidden, 1, bias=False)
                self.expand_BN = bn(hidden)
            self.stride = stride
            # stride 1: "same" (pad 1 all round); stride 2: TF's bottom/right padding, below
            self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, padding=1 if stride == 1 else 0,
                                       groups=hidden, bias=False)
            self.depthwise_BN = bn(hidden)
            self.project = nn.Conv2d(hidden, out_channels, 1, bias=False)
            self.project_BN = bn(out_channels)
            self.residual = stride == 1 and in_channels == out_channels

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = x
            if self.expand is not None and self.expand_BN is not None:
                y = F.relu6(self.expand_BN(self.expand(y)))
            if self.stride == 2:
                y = F.pad(y, (0, 1, 0, 1))
            y = F.relu6(self.depthwise_BN(self.depthwise(y)))
            y = self.project_BN(self.project(y))
            return x + y if self.residual else y

    class MobileNetV2(nn.Module):
        """Takes the public input: NHWC pixels in [0, 1]."""

        def __init__(self) -> None:
            super().__init__()
            self.Conv1 = nn.Conv2d(CHANNELS, STEM_CHANNELS, 3, 2, padding=0, bias=False)
            self.bn_Conv1 = bn(STEM_CHANNELS)
            blocks = []
            channels = STEM_CHANNELS
            for expansion, out_channels, repeats, first_stride in BLOCKS:
                for r in range(repeats):
                    block_id = len(blocks)
                    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
                    blocks.append(InvertedResidual(prefix, channels, out_channels,
                                                   first_stride if r == 0 else 1, expansion))
                    channels = out_channels
            self.blocks = nn.ModuleList(blocks)
            self.Conv_1 = nn.Conv2d(channels, LAST_CHANNELS, 1, bias=False)
            self.Conv_1_bn = bn(LAST_CHANNELS)
            self.predictions = nn.Linear(LAST_CHANNELS, NUM_CLASSES)

        def features(self, x: torch.Tensor) -> torch.Tensor:
            """Pooled features (N, 1280) of public-format input."""
            x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
            x = F.relu6(self.bn_Conv1(self.Conv1(F.pad(x, (0, 1, 0, 1)))))
            for block in self.blocks:
                x = block(x)
            x = F.relu6(self.Conv_1_bn(self.Conv_1(x)))
            return x.mean(dim=(2, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.predictions(self.features(x))

        def keras_named(self) -> list[tuple[str, nn.Module]]:
            """Every layer with weights, under the name of its Keras twin layer."""
            named: list[tuple[str, nn.Module]] = [("Conv1", self.Conv1),
                                                  ("bn_Conv1", self.bn_Conv1)]
            for block in self.blocks:
                for part in ("expand", "expand_BN", "depthwise", "depthwise_BN", "project",
                             "project_BN"):
                    module = getattr(block, part)
                    if module is not None:
                        named.append((block.prefix + part, module))
            named += [("Conv_1", self.Conv_1), ("Conv_1_bn", self.Conv_1_bn),
                      ("predictions", self.predictions)]
            return named

    return MobileNetV2


def _bf16(tensor: torch.Tensor) -> torch.Tensor:
    """Rounded to bfloat16 precision (kept in the tensor's own dtype)."""
    import torch

    return tensor.to(torch.bfloat16).to(tensor.dtype)


@functools.cache
def _seeded_state() -> dict[str, torch.Tensor]:
    """The seeded weights (computed once per process; see the module docstring)."""
    import torch
    from torch import nn

    model = _torch_classes()()
    generator = torch.Generator().manual_seed(SEED)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            # He init over each filter's real fan-out: torch's fan for a grouped convolution
            # ignores the groups, which would make depthwise filters ~30x too small
            fan_out = module.out_channels // module.groups * module.kernel_size[0] ** 2
            nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5, generator=generator)
    norms: list[nn.BatchNorm2d] = []
    for name, module in model.keras_named():
        if not isinstance(module, nn.BatchNorm2d):
            continue
        role = "relu6"
        if name.endswith("project_BN"):
            block = next(b for b in model.blocks if name.startswith(b.prefix))
            role = "residual" if block.residual else "linear"
        (gamma_low, gamma_high), (beta_mean, beta_std) = BN_SEEDING[role]
        nn.init.uniform_(module.weight, gamma_low, gamma_high, generator=generator)
        nn.init.normal_(module.bias, beta_mean, beta_std, generator=generator)
        module.momentum = None  # cumulative average: exactly the calibration batch's statistics
        module.reset_running_stats()
        norms.append(module)

    prototypes = torch.from_numpy(synthetic_images(PROTOTYPE))
    with torch.no_grad():
        model.train()
        model.features(prototypes)  # BatchNorm statistics: one pass in training mode
        model.eval()
        for norm in norms:
            norm.momentum = 0.1  # PyTorch's default again
            norm.running_mean.copy_(_bf16(norm.running_mean))
            norm.running_var.copy_(_bf16(norm.running_var))

        # the classifier: imprinted rows for SCENES classes, weaker random rows for the rest
        features = model.features(prototypes).double()
        mean = features.mean(dim=0)
        direction = _bf16(mean / mean.norm())
        direction /= direction.norm()

        def centred_unit(rows: torch.Tensor) -> torch.Tensor:
            rows = rows - (rows @ direction)[:, None] * direction[None, :]
            return rows / rows.norm(dim=1, keepdim=True)

        imprinted = centred_unit(_bf16(features - mean))
        random_rows = torch.randn(NUM_CLASSES, LAST_CHANNELS, generator=generator,
                                  dtype=torch.float64)
        weight = BACKGROUND * centred_unit(random_rows)
        classes = torch.randperm(NUM_CLASSES, generator=generator)[:SCENES]
        weight[classes] = imprinted
        own = (features - mean) @ imprinted.T  # each prototype against every imprinted class
        weight *= TOP_LOGIT / _bf16(own.diagonal().median())
        bias = torch.randn(NUM_CLASSES, generator=generator, dtype=torch.float64) * BIAS_STD
        model.predictions.weight.copy_(weight.float())
        model.predictions.bias.copy_(bias.float())
    return {name: value.clone() for name, value in model.state_dict().items()}


def build_torch_model() -> torch.nn.Module:
    """The PyTorch twin with the seeded weights, in eval mode."""
    model = _torch_classes()()
    model.load_state_dict(_seeded_state())
    return model.eval()


# --- the Keras twin ------------------------------------------------------------------------


def build_keras_model(input_name: str = "image") -> keras.Model:
    """keras.applications.MobileNetV2, no weights, logits out, input named `input_name`."""
    import keras

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, CHANNELS), name=input_name)
    return keras.applications.MobileNetV2(
        input_tensor=inputs,
        alpha=1.0,
        include_top=True,
        weights=None,
        classes=NUM_CLASSES,
        classifier_activation=None,
        name="mobilenet_v2",
    )


class MobileNetV2Spec(ModelSpec):
    """A spec whose twins are written out here, not built from the layer list."""

    def build_torch(self) -> torch.nn.Module:
        return build_torch_model()

    def build_keras(self) -> keras.Model:
        import keras

        model = build_keras_model(self.input_name)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization) and (
                layer.epsilon != BN_EPSILON
            ):
                raise ValueError(f"{layer.name}: epsilon {layer.epsilon} != {BN_EPSILON}")
        return model

    def copy_weights(self, torch_model: torch.nn.Module, keras_model: keras.Model) -> None:
        """Each PyTorch layer into the Keras layer it is named after; every Keras layer with
        weights must get some."""
        named = dict(torch_model.keras_named())
        keras_layers = {layer.name for layer in keras_model.layers if layer.weights}
        if set(named) != keras_layers:
            raise ValueError(
                f"{self.name}: layers do not pair up (Keras only: "
                f"{sorted(keras_layers - set(named))}, PyTorch only: "
                f"{sorted(set(named) - keras_layers)})"
            )
        for name, module in named.items():
            keras_model.get_layer(name).set_weights(torch_to_keras_weights(module))


SPEC = MobileNetV2Spec(
    name="mobilenet-v2",
    description="MobileNetV2 1.0, seeded weights, RGB pixels/255, input (N, 224, 224, 3)",
    input_shape=(IMAGE_SIZE, IMAGE_SIZE, CHANNELS),
    num_classes=NUM_CLASSES,
    layers=[],  # the twins are written out above
    data=data,
    training=None,
    input_name="image",
    output_name="logits",
    min_accuracy=None,
    # one 224x224x3 image is ~3.1 MB as JSON; TorchServe refuses bodies over max_request_size
    # (6.5 MB, serving/config/config.properties), so a REST request carries at most 2 images
    max_rows=2,
)

"""text-bert: a small BERT sequence classifier, built by the two hub libraries.

Which library is a docstring from (numpy, pandas, scikit-learn or torch)? The data set is
`deploybench.zoo.docstrings`: texts read from the installed packages' sources, nothing downloaded.
The kit's text model: two int32 inputs whose sequence axis varies from request to request,
and an architecture people deploy from a hub rather than write layer by layer.

Twins. The PyTorch twin is `transformers`' BertForSequenceClassification, the Keras twin
keras-hub's BertBackbone with a Dense head on its pooled output; both are built from one set of
sizes (2 layers, hidden 128, 2 heads, intermediate 512, vocabulary 2,000, 64 positions, 4
classes). Weights are trained once on the PyTorch side (the kit's generic loop) and carried
across the way the hubs carry them, through local folders: `save_pretrained` writes a transformers
BERT folder, keras-hub's `BertBackbone.from_preset` reads that folder itself (its own converter,
not ours), and only the classifier head (Linear -> Dense, kernel transposed) is copied by hand.
Nothing is ever fetched from a hub.
- keras-hub's BERT uses the tanh approximation of GELU (exact GELU differs by ~8e-4 on the
  trained model's logits). The PyTorch twin computes it with `hidden_act="gelu_new"`, the same
  formula in plain operators (tanh, pow, mul), not "gelu_pytorch_tanh" (one
  `gelu(approximate="tanh")` operator), though the two agree within 1e-6: ExecuTorch 1.5's
  XNNPACK delegate ignores `approximate="tanh"` and computes exact GELU (measured: the lowered
  model then matched an exact-GELU model within 4e-6 and its own eager model only within 9e-4),
  and plain operators mean the same thing in every runtime.
- Layer norm epsilon 1e-12 on both sides (BERT's; keras-hub's converter does not carry it, its
  default is the same).
- token_type_ids / segment_ids are zeros: one segment.

Signature, every artifact: inputs `input_ids` and `attention_mask`, int32 (N, L), L from 1 to 64
(the rows padded with id 0 and mask 0 after their own length; token 0 is [PAD]); output
`logits`, float32 (N, 4), no softmax, classes in CLASSES order (alphabetical).
- PyTorch: `TextBertClassifier.forward(input_ids, attention_mask)`. It hands BERT a ready 4-D
  mask (N, 1, 1, L) over the keys, which transformers 5 uses as it is: boolean for the default
  SDPA attention, additive for eager attention. Given the 2-D mask, transformers builds the 4-D
  one itself, with an int64 index that torchao's PT2E prepare turns into float (quantizing then
  fails: "tensors used as indices must be long, int, byte or bool tensors").
- Keras: a functional model with inputs named `input_ids` and `attention_mask` (shape (None,),
  int32, in that order) returning a dict {"logits": (N, 4)} (its Dense layer is named `logits`
  too): `model.export()` and the TFLite converter name a dict output after its key, a plain
  tensor output `output_0` whatever its layer is called.

Tokenizer. WordPiece, trained here on the training split only: BERT's normalizer (lowercase,
accents stripped), BERT's pre-tokenizer, vocabulary 2,000 with [PAD]=0, [UNK]=1, [CLS]=2,
[SEP]=3, [MASK]=4, and [CLS] ... [SEP] around every text, truncated to 64 tokens; the `tokenizers`
library runs it. Facts behind the choices:
- the `tokenizers` library's own WordPieceTrainer is not deterministic: its hash maps give
  characters of equal count ids in a random order, and ties between merges are broken by those
  ids (30 trainings on the same texts gave 30 id orders and two different vocabularies). So
  `train_vocabulary` makes the same BPE-style merges itself, ties broken by the pair's text,
  and the vocabulary is handed to the library's WordPiece model (~0.5 s for 4,000 texts);
- keras-hub's `BertTokenizer(vocabulary=..., lowercase=True)` gives the same ids on all 5,000
  texts of the corpus (checked without [CLS]/[SEP]);
- transformers 5's `BertTokenizer(vocab_file=...)` and `BertTokenizerFast(vocab_file=...)`
  silently ignore the file (every token [UNK]); `BertTokenizer(vocab=dict)` and
  `from_pretrained(folder)` read it.

Training (the kit's loop, Adam, 8 epochs of 4,000 texts, batch 32, one thread): ~95 s, held-out
accuracy 0.782 at learning rate 1e-3 (chance 0.25); 2e-4 and 5e-4 gave ~0.75. The same weights
come out in every process (training and tokenizer both deterministic). The twins agree on the
1,000 held-out texts within 6e-6 (argmax everywhere), padded in groups of 32.

Hub folders (`save_hub_torch` / `save_hub_keras`, read back by the `load_hub_*` functions):
- transformers: the model's `save_pretrained` (config.json, model.safetensors), the tokenizer's
  (tokenizer.json, tokenizer_config.json: `AutoTokenizer.from_pretrained` reads them) and
  vocab.txt (keras-hub's `BertTokenizer.from_preset` reads it with tokenizer_config.json): a
  folder both hub libraries read whole;
- keras-hub: the backbone's `save_to_preset` (config.json, metadata.json, model.weights.h5), the
  tokenizer's `save_to_preset` (tokenizer.json and its vocabulary asset), and the classifier head
  beside them in `classifier.npz`: `kernel` float32 (128, 4) and `bias` float32 (4,), the Dense
  layer's own weights.
"""

from __future__ import annotations

import functools
import heapq
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deploybench.batch import Batch
from deploybench.zoo import docstrings
from deploybench.zoo.spec import Input, ModelSpec, Split, Training

if TYPE_CHECKING:
    import keras
    import tokenizers
    import torch

CLASSES = docstrings.CLASSES
NUM_CLASSES = len(CLASSES)
VOCAB_SIZE = 2000
MAX_LENGTH = 64  # tokens, [CLS] and [SEP] included; also BERT's number of positions
LAYERS = 2
HIDDEN = 128
HEADS = 2
INTERMEDIATE = 512
DROPOUT = 0.1  # training only
LAYER_NORM_EPSILON = 1e-12
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4
CONTINUATION = "##"  # marks a piece that continues a word
PAD_ID = 0
VOCAB_FILE = "vocab.txt"
CLASSIFIER_FILE = "classifier.npz"
INPUTS = ("input_ids", "attention_mask")


# --- tokenizer and data ----------------------------------------------------------------------


def train_vocabulary(texts: tuple[str, ...] | list[str]) -> list[str]:
    """A WordPiece vocabulary of VOCAB_SIZE tokens learnt from `texts`, in id order: the special
    tokens, the alphabet (every character, and its "##" form where it continues a word), sorted,
    then the merged tokens in the order they were made. The merges are those of the tokenizers
    library's WordPieceTrainer (BPE over the normalised, pre-tokenized words, counted once per
    occurrence; a continuation's "##" dropped when merged), the most frequent pair first and ties
    broken by the pair's text, so the same texts always give the same vocabulary."""
    from tokenizers import normalizers, pre_tokenizers

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = Counter(
        word for text in texts
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))
    )
    entries = sorted(words.items())
    splits = [[word[0], *(CONTINUATION + char for char in word[1:])] for word, _ in entries]
    counts = [count for _, count in entries]
    alphabet = {char for word, _ in entries for char in word}
    alphabet.update(symbol for symbols in splits for symbol in symbols)
    vocab = [*SPECIAL_TOKENS, *sorted(alphabet - set(SPECIAL_TOKENS))]
    known = set(vocab)
    pair_counts: Counter[tuple[str, str]] = Counter()
    where: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
    for index, symbols in enumerate(splits):
        for pair in zip(symbols, symbols[1:], strict=False):
            pair_counts[pair] += counts[index]
            where[pair].add(index)
    # a max-heap by (count, then the smaller pair text); stale entries are skipped when popped
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)
    while len(vocab) < VOCAB_SIZE and heap:
        negative_count, pair = heapq.heappop(heap)
        if pair_counts.get(pair, 0) != -negative_count:
            continue
        first, second = pair
        merged = first + second.removeprefix(CONTINUATION)
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
        touched = set()
        for index in sorted(where.pop(pair)):
            symbols, count = splits[index], counts[index]
            for old in zip(symbols, symbols[1:], strict=False):
                pair_counts[old] -= count
                where[old].discard(index)
                touched.add(old)
            joined, position = [], 0
            while position < len(symbols):
                if symbols[position : position + 2] == [first, second]:
                    joined.append(merged)
                    position += 2
                else:
                    joined.append(symbols[position])
                    position += 1
            splits[index] = joined
            for new in zip(joined, joined[1:], strict=False):
                pair_counts[new] += count
                where[new].add(index)
                touched.add(new)
        for changed in sorted(touched):
            if pair_counts[changed] > 0:
                heapq.heappush(heap, (-pair_counts[changed], changed))
            else:
                del pair_counts[changed]
                where.pop(changed, None)
    return vocab


@functools.cache
def _trained_tokenizer() -> tuple[tokenizers.Tokenizer, float]:
    """The WordPiece tokenizer trained on the training split, and the seconds training took."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    start = time.perf_counter()
    vocab = train_vocabulary(docstrings.split().train_texts)
    tokenizer = Tokenizer(models.WordPiece(
        {token: index for index, token in enumerate(vocab)}, unk_token="[UNK]",
        continuing_subword_prefix=CONTINUATION, max_input_chars_per_word=100,
    ))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.BertProcessing(
        ("[SEP]", SPECIAL_TOKENS.index("[SEP]")), ("[CLS]", SPECIAL_TOKENS.index("[CLS]"))
    )
    tokenizer.enable_truncation(MAX_LENGTH)
    return tokenizer, time.perf_counter() - start


def tokenizer() -> tokenizers.Tokenizer:
    """The trained tokenizer (trained once per process)."""
    return _trained_tokenizer()[0]


def vocabulary() -> list[str]:
    """The tokenizer's vocabulary in id order (token i has id i)."""
    by_id = {index: token for token, index in tokenizer().get_vocab().items()}
    return [by_id[index] for index in range(len(by_id))]


def tokenize(texts: list[str] | tuple[str, ...]) -> Batch:
    """Texts as the model's inputs: int32 (N, 64) token ids and attention mask, each row
    [CLS] ... [SEP], truncated to 64 tokens and padded with 0 after its own length."""
    encodings = tokenizer().encode_batch(list(texts))
    input_ids = np.zeros((len(encodings), MAX_LENGTH), dtype=np.int32)
    lengths = np.zeros(len(encodings), dtype=np.int64)
    for row, encoding in enumerate(encodings):
        lengths[row] = len(encoding.ids)
        input_ids[row, : lengths[row]] = encoding.ids
    attention_mask = (np.arange(MAX_LENGTH)[None, :] < lengths[:, None]).astype(np.int32)
    return Batch({"input_ids": input_ids, "attention_mask": attention_mask}, lengths,
                 frozenset(INPUTS))


def data() -> Split:
    """The docstrings split, tokenized; labels int64 in 0..3 (CLASSES order)."""
    split = docstrings.split()
    return Split(tokenize(split.train_texts), split.y_train,
                 tokenize(split.test_texts), split.y_test)


def data_provenance() -> dict[str, Any]:
    """Where the data came from: the corpus' sha256, the libraries' versions, the examples per
    class and split, the tokenizer's vocabulary size."""
    corpus = docstrings.corpus()
    split = docstrings.split()

    def per_class(labels: np.ndarray) -> dict[str, int]:
        return {name: int(count) for name, count in
                zip(CLASSES, np.bincount(labels, minlength=NUM_CLASSES), strict=True)}

    return {
        "corpus_sha256": corpus.sha256,
        "library_versions": dict(corpus.versions),
        "examples": {"train": per_class(split.y_train), "test": per_class(split.y_test)},
        "candidates": dict(corpus.candidates),
        "tokenizer_vocab_size": tokenizer().get_vocab_size(),
        "max_length": MAX_LENGTH,
    }


def write_vocabulary(folder: Path) -> Path:
    """The vocabulary as a BERT vocab.txt in `folder` (one token a line, in id order)."""
    path = Path(folder) / VOCAB_FILE
    path.write_text("".join(f"{token}\n" for token in vocabulary()), encoding="utf-8")
    return path


# --- the PyTorch twin ------------------------------------------------------------------------


def bert_config() -> Any:  # transformers.BertConfig
    BertConfig = _transformers().BertConfig  # noqa: N806

    return BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        hidden_act="gelu_new",  # keras-hub's tanh GELU, in plain ops (module docstring)
        hidden_dropout_prob=DROPOUT,
        attention_probs_dropout_prob=DROPOUT,
        max_position_embeddings=MAX_LENGTH,
        type_vocab_size=2,
        layer_norm_eps=LAYER_NORM_EPSILON,
        pad_token_id=PAD_ID,
        num_labels=NUM_CLASSES,
        id2label=dict(enumerate(CLASSES)),
        label2id={name: index for index, name in enumerate(CLASSES)},
    )


@functools.cache
def _transformers() -> Any:
    """transformers, its progress bars ("Writing model shards") and warnings off the terminal:
    nothing a user of the kit acts on (its loggers still reach the log at error level). torchao,
    which transformers imports, registers enums torch calls deprecated, on torch's own handler."""
    import logging

    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


@functools.cache
def _torch_classes():  # noqa: ANN202 - an nn.Module subclass, made once torch is imported
    import torch
    from torch import nn

    class TextBertClassifier(nn.Module):
        """BertForSequenceClassification behind the public signature: int32 (N, L) token ids
        and attention mask in, float32 (N, 4) logits out."""

        def __init__(self, bert: nn.Module) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            # a ready 4-D mask over the keys, used by transformers as it is: boolean (True: may
            # be attended) for SDPA, additive (0 or the lowest float) for eager attention
            keys = attention_mask.bool()[:, None, None, :]
            implementation = self.bert.config._attn_implementation
            if implementation == "eager":
                lowest = torch.finfo(torch.float32).min
                mask = torch.zeros(keys.shape, dtype=torch.float32).masked_fill(~keys, lowest)
            elif implementation == "sdpa":
                mask = keys
            else:
                raise ValueError(f"attention {implementation!r}: expected 'sdpa' or 'eager'")
            return self.bert(
                input_ids=input_ids,
                attention_mask=mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).logits

    return TextBertClassifier


def wrap_torch(bert: torch.nn.Module) -> torch.nn.Module:
    """A BertForSequenceClassification behind the public signature."""
    return _torch_classes()(bert)


def build_torch_model() -> torch.nn.Module:
    """The PyTorch twin, freshly initialised (transformers' BERT init)."""
    BertForSequenceClassification = _transformers().BertForSequenceClassification  # noqa: N806

    return wrap_torch(BertForSequenceClassification(bert_config()))


def save_hub_torch(torch_model: torch.nn.Module, folder: Path | str) -> None:
    """A transformers BERT folder: the model's `save_pretrained` (config.json,
    model.safetensors), the tokenizer's (tokenizer.json, tokenizer_config.json: what
    `AutoTokenizer.from_pretrained` reads) and the vocabulary (vocab.txt, what keras-hub reads)."""
    BertTokenizer = _transformers().BertTokenizer  # noqa: N806

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch_model.bert.save_pretrained(folder)
    vocab = {token: index for index, token in enumerate(vocabulary())}
    BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=MAX_LENGTH).save_pretrained(
        folder)
    write_vocabulary(folder)


def load_hub_torch(folder: Path | str) -> torch.nn.Module:
    """The PyTorch twin read back from a `save_hub_torch` folder, in eval mode."""
    BertForSequenceClassification = _transformers().BertForSequenceClassification  # noqa: N806

    bert = BertForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    return wrap_torch(bert).eval()


# --- the Keras twin --------------------------------------------------------------------------


def build_keras_backbone() -> Any:  # keras_hub.models.BertBackbone
    import keras_hub

    return keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB_SIZE,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=INTERMEDIATE,
        dropout=DROPOUT,
        max_sequence_length=MAX_LENGTH,
        num_segments=2,
    )


def keras_classifier(backbone: Any) -> keras.Model:
    """`backbone` (a BertBackbone) with the public signature and a Dense head on its pooled
    output (the head freshly initialised). Called with [input_ids, attention_mask] (or a dict
    keyed by those names), it returns {"logits": (N, 4)}."""
    import keras

    input_ids = keras.Input((None,), dtype="int32", name="input_ids")
    attention_mask = keras.Input((None,), dtype="int32", name="attention_mask")
    outputs = backbone({
        "token_ids": input_ids,
        "segment_ids": keras.ops.zeros_like(input_ids),
        "padding_mask": attention_mask,
    })
    logits = keras.layers.Dense(NUM_CLASSES, name="logits")(outputs["pooled_output"])
    # a dict output: `model.export()` and the TFLite converter name the output after its key
    # (a plain tensor output is called `output_0` whatever its layer's name)
    return keras.Model([input_ids, attention_mask], {"logits": logits}, name="text_bert")


def keras_backbone_of(keras_model: keras.Model) -> Any:
    import keras_hub

    found = [layer for layer in keras_model.layers
             if isinstance(layer, keras_hub.models.BertBackbone)]
    if len(found) != 1:
        raise ValueError(f"expected one BertBackbone in {keras_model.name}, found {len(found)}")
    return found[0]


def save_hub_keras(keras_model: keras.Model, folder: Path | str) -> None:
    """A keras-hub preset folder: the backbone's and the tokenizer's `save_to_preset`, and the
    classifier head in classifier.npz (`kernel` (128, 4), `bias` (4,))."""
    import keras_hub

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    keras_backbone_of(keras_model).save_to_preset(str(folder))
    keras_hub.models.BertTokenizer(vocabulary=vocabulary(), lowercase=True).save_to_preset(
        str(folder))
    kernel, bias = keras_model.get_layer("logits").get_weights()
    np.savez(folder / CLASSIFIER_FILE, kernel=kernel, bias=bias)


def load_hub_keras(folder: Path | str) -> keras.Model:
    """The Keras twin read back from a `save_hub_keras` folder."""
    import keras_hub

    folder = Path(folder)
    model = keras_classifier(keras_hub.models.BertBackbone.from_preset(str(folder)))
    with np.load(folder / CLASSIFIER_FILE) as head:
        model.get_layer("logits").set_weights([head["kernel"], head["bias"]])
    return model


def copy_torch_to_keras(torch_model: torch.nn.Module, keras_model: keras.Model) -> None:
    """The trained PyTorch weights into the Keras twin: the backbone through a transformers
    folder that keras-hub converts itself, the head (Linear -> Dense) by hand."""
    import keras_hub

    with tempfile.TemporaryDirectory(prefix="text-bert-") as folder:
        torch_model.bert.save_pretrained(folder)
        converted = keras_hub.models.BertBackbone.from_preset(folder)
    target = keras_backbone_of(keras_model)
    sizes = ("vocabulary_size", "num_layers", "num_heads", "hidden_dim", "intermediate_dim",
             "max_sequence_length", "num_segments")
    different = [key for key in sizes if getattr(converted, key) != getattr(target, key)]
    if different:
        raise ValueError(f"the converted BertBackbone differs from the Keras twin in {different}")
    target.set_weights(converted.get_weights())  # same class and sizes: same weight order
    classifier = torch_model.bert.classifier
    keras_model.get_layer("logits").set_weights([
        classifier.weight.detach().cpu().numpy().T, classifier.bias.detach().cpu().numpy()
    ])


# --- the spec --------------------------------------------------------------------------------


class TextBertSpec(ModelSpec):
    """A two-input text model whose twins come from transformers and keras-hub."""

    def public_inputs(self) -> tuple[Input, ...]:
        return (
            Input("input_ids", (MAX_LENGTH,), "int32", dynamic=(0,), high=VOCAB_SIZE),
            Input("attention_mask", (MAX_LENGTH,), "int32", dynamic=(0,), high=2),
        )

    def build_torch(self) -> torch.nn.Module:
        return build_torch_model()

    def build_keras(self) -> keras.Model:
        return keras_classifier(build_keras_backbone())

    def copy_weights(self, torch_model: torch.nn.Module, keras_model: keras.Model) -> None:
        copy_torch_to_keras(torch_model, keras_model)

    def save_hub_torch(self, torch_model: torch.nn.Module, folder: Path | str) -> None:
        save_hub_torch(torch_model, folder)

    def load_hub_torch(self, folder: Path | str) -> torch.nn.Module:
        return load_hub_torch(folder)

    def save_hub_keras(self, keras_model: keras.Model, folder: Path | str) -> None:
        save_hub_keras(keras_model, folder)

    def load_hub_keras(self, folder: Path | str) -> keras.Model:
        return load_hub_keras(folder)

    def vocabulary(self) -> list[str]:
        return vocabulary()

    def tokenize(self, texts: list[str]) -> Batch:
        return tokenize(texts)

    def data_provenance(self) -> dict[str, Any]:
        return data_provenance()


SPEC = TextBertSpec(
    name="text-bert",
    description=(
        "BERT 2x128 (transformers / keras-hub), which library a docstring is from, "
        "inputs input_ids + attention_mask (N, <=64)"
    ),
    input_shape=(MAX_LENGTH,),
    num_classes=NUM_CLASSES,
    layers=[],  # the twins come from the hub libraries
    data=data,
    training=Training(epochs=8, batch_size=32, learning_rate=1e-3),
    input_name="input_ids",
    output_name="logits",
    min_accuracy=0.65,
    max_rows=32,
)

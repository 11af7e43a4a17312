"""lmlab.data.shards: shards round-trip the tokenised corpus, splits are reproducible, packing is
deterministic, resumable and rank-consistent, and damaged shards fail with the file's name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.data.shards import (
    INDEX_NAME,
    PackedBlocks,
    ShardIndex,
    TokenShards,
    build_shards,
    position_ids,
    segment_ids,
    sequential_batches,
)
from lmlab.errors import LmlabError


class CharTokenizer:
    """Char-level stand-in for lmlab's tokenizer: id = code point + offset, eos = 0."""

    def __init__(self, vocab_size: int = 128, offset: int = 0) -> None:
        self.vocab_size = vocab_size
        self.offset = offset
        self.eos_id = 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) + self.offset for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(int(i) - self.offset) for i in ids)


class BatchTokenizer(CharTokenizer):
    fingerprint = "char-v1"

    def __init__(self) -> None:
        super().__init__()
        self.batch_calls = 0

    def encode(self, text: str) -> list[int]:  # pragma: no cover - must not be used
        raise AssertionError("encode_batch should have been used")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        self.batch_calls += 1
        return [CharTokenizer.encode(self, t) for t in texts]


def docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(chr(int(c)) for c in rng.integers(97, 123, size=int(rng.integers(1, 40)))) for _ in range(n)]


def one_line_error(excinfo: pytest.ExceptionInfo, *needles: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


@pytest.fixture()
def shard_dir(tmp_path: Path) -> Path:
    out = tmp_path / "shards"
    build_shards(docs(300), CharTokenizer(), out, shard_tokens=997)
    return out


# -- building -----------------------------------------------------------------------------------------


def test_roundtrip_multiple_files(tmp_path: Path) -> None:
    tok = CharTokenizer()
    corpus = docs(200)
    index = build_shards(corpus, tok, tmp_path / "s", shard_tokens=101)
    expected = np.concatenate([np.array(tok.encode(d) + [tok.eos_id]) for d in corpus])
    ts = TokenShards(tmp_path / "s")
    assert len(index.splits["train"].files) > 3 and all(f.tokens <= 101 for f in index.splits["train"].files)
    assert len(ts) == len(expected) == index.splits["train"].tokens
    np.testing.assert_array_equal(ts.read(0, len(ts)), expected)
    np.testing.assert_array_equal(ts[95:310], expected[95:310])  # crosses file boundaries
    assert ts.read(7, 7).shape == (0,)
    assert tok.decode(t for t in ts[: len(ts)] if t != 0) == "".join(corpus)
    raw = json.loads((tmp_path / "s" / INDEX_NAME).read_text())
    assert raw["num_documents"] == 200 and raw["vocab_size"] == 128 and raw["eos_id"] == 0
    assert raw["splits"]["train"]["documents"] == 200 and raw["splits"]["val"]["tokens"] == 0
    assert ShardIndex.load(tmp_path / "s") == index


def test_no_eos_and_encode_batch_and_fingerprint(tmp_path: Path) -> None:
    tok = BatchTokenizer()
    corpus = docs(600)
    index = build_shards(corpus, tok, tmp_path / "s", append_eos=False)
    assert tok.batch_calls >= 2
    assert index.tokenizer_fingerprint == "char-v1"
    assert TokenShards(tmp_path / "s")[:].tolist() == [ord(c) for c in "".join(corpus)]
    ts = TokenShards(tmp_path / "s")
    ts.check_tokenizer(tok)
    other = BatchTokenizer()
    other.fingerprint = "char-v2"
    with pytest.raises(LmlabError) as e:
        ts.check_tokenizer(other)
    one_line_error(e, INDEX_NAME, "char-v1", "char-v2")


@pytest.mark.parametrize(
    ("vocab", "offset", "dtype", "itemsize"),
    [(128, 0, "uint16", 2), (65535, 65000, "uint16", 2), (65536, 65400, "uint32", 4), (70000, 69000, "uint32", 4)],
)
def test_dtype_selection(tmp_path: Path, vocab: int, offset: int, dtype: str, itemsize: int) -> None:
    tok = CharTokenizer(vocab, offset)
    index = build_shards(["abc", "de"], tok, tmp_path / "s")
    assert index.dtype == dtype
    f = tmp_path / "s" / index.splits["train"].files[0].name
    assert f.stat().st_size == 7 * itemsize
    want = [offset + 97, offset + 98, offset + 99, 0, offset + 100, offset + 101, 0]
    assert TokenShards(tmp_path / "s")[:].tolist() == want


def test_explicit_dtype_too_small_and_bad_ids(tmp_path: Path) -> None:
    with pytest.raises(LmlabError, match="uint16"):
        build_shards(["a"], CharTokenizer(70000), tmp_path / "s", dtype="uint16")
    assert build_shards(["a"], CharTokenizer(), tmp_path / "s", dtype="uint32").dtype == "uint32"
    with pytest.raises(LmlabError) as e:
        build_shards(["ok", "é€"], CharTokenizer(128), tmp_path / "t")  # € is > 128
    one_line_error(e, "document 1", "vocab_size=128")
    with pytest.raises(LmlabError, match="expected a str"):
        build_shards([{"messages": []}], CharTokenizer(), tmp_path / "t")
    with pytest.raises(LmlabError, match="no documents"):
        build_shards([], CharTokenizer(), tmp_path / "t")
    assert not (tmp_path / "t").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temp dirs left behind


def test_val_split_deterministic_and_hash_based(tmp_path: Path) -> None:
    corpus = [f"d{i:04d}" for i in range(2000)]  # document i is identifiable by its text
    tok = CharTokenizer()

    def split_docs(out: Path) -> tuple[set[str], set[str]]:
        def texts(split: str) -> set[str]:
            toks = TokenShards(out, split)[:].tolist()
            return set(tok.decode(toks).split("\x00")) - {""}

        return texts("train"), texts("val")

    a = build_shards(corpus, tok, tmp_path / "a", val_fraction=0.1, seed=3)
    b = build_shards(corpus, tok, tmp_path / "b", val_fraction=0.1, seed=3)
    c = build_shards(corpus, tok, tmp_path / "c", val_fraction=0.1, seed=4)
    tr_a, va_a = split_docs(tmp_path / "a")
    tr_b, va_b = split_docs(tmp_path / "b")
    tr_c, va_c = split_docs(tmp_path / "c")
    assert (tr_a, va_a) == (tr_b, va_b) and b.num_documents == a.num_documents
    assert va_a != va_c
    assert tr_a.isdisjoint(va_a) and tr_a | va_a == set(corpus)
    assert 140 <= len(va_a) <= 260  # ~10% of 2000
    assert a.splits["val"].documents == len(va_a) and a.num_documents == 2000
    # not positional: validation documents are spread over the whole corpus
    val_idx = sorted(int(d[1:]) for d in va_a)
    assert val_idx[0] < 200 and val_idx[-1] > 1800
    assert c.splits["train"].tokens + c.splits["val"].tokens == 2000 * 6


def test_rebuild_replaces_but_never_clobbers(tmp_path: Path) -> None:
    out = tmp_path / "s"
    build_shards(["aaaa"], CharTokenizer(), out)
    build_shards(["bb"], CharTokenizer(), out)
    assert TokenShards(out)[:].tolist() == [98, 98, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]

    def failing():
        yield "cc"
        raise RuntimeError("reader died")

    with pytest.raises(RuntimeError):
        build_shards(failing(), CharTokenizer(), out)
    assert TokenShards(out)[:].tolist() == [98, 98, 0]  # previous shards untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    with pytest.raises(LmlabError) as e:
        build_shards(["x"], CharTokenizer(), other)
    one_line_error(e, "mine", "refusing")
    assert (other / "notes.txt").read_text() == "precious"


# -- reading errors -----------------------------------------------------------------------------------


def test_truncated_shard_names_file(shard_dir: Path) -> None:
    first = shard_dir / "train_00001.bin"
    first.write_bytes(first.read_bytes()[:-3])
    with pytest.raises(LmlabError) as e:
        TokenShards(shard_dir)
    one_line_error(e, "train_00001.bin", "truncated")


def test_missing_index_file_and_split(tmp_path: Path, shard_dir: Path) -> None:
    with pytest.raises(LmlabError) as e:
        TokenShards(tmp_path / "nowhere")
    one_line_error(e, "nowhere", INDEX_NAME)
    with pytest.raises(LmlabError) as e:
        TokenShards(shard_dir, "val")
    one_line_error(e, "shards", "'val'", "no tokens")
    with pytest.raises(LmlabError) as e:
        TokenShards(shard_dir, "test")
    one_line_error(e, "'test'", "train, val")
    (shard_dir / "train_00002.bin").unlink()
    with pytest.raises(LmlabError) as e:
        TokenShards(shard_dir)
    one_line_error(e, "train_00002.bin", "missing")
    (shard_dir / INDEX_NAME).write_text("{not json")
    with pytest.raises(LmlabError) as e:
        TokenShards(shard_dir)
    one_line_error(e, INDEX_NAME, "JSON")
    (shard_dir / INDEX_NAME).write_text('{"format": "lmlab-token-shards", "version": 1, "dtype": "uint16"}')
    with pytest.raises(LmlabError) as e:
        TokenShards(shard_dir)
    one_line_error(e, INDEX_NAME, "missing key")


# -- packing ------------------------------------------------------------------------------------------


def test_windows_cover_stream_once_per_epoch(shard_dir: Path) -> None:
    ts = TokenShards(shard_dir)
    T = 16
    pb = PackedBlocks(ts, T, seed=5)
    assert pb.num_blocks == (len(ts) - 1) // T
    x, y = pb.next_batch(pb.num_blocks)  # exactly one epoch
    assert x.shape == y.shape == (pb.num_blocks, T) and x.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
    assert pb.state_dict()["epoch"] == 1 and pb.state_dict()["position"] == 0
    # epoch e visits block order permutation(seed + e); block i is stream[i*T : i*T + T + 1]
    stream = torch.from_numpy(ts[:])
    order0 = np.random.default_rng(5).permutation(pb.num_blocks)
    for row, i in enumerate(order0):
        assert torch.equal(x[row], stream[i * T : i * T + T]) and torch.equal(y[row], stream[i * T + 1 : i * T + T + 1])
    x1, _ = pb.next_batch(4)
    order1 = np.random.default_rng(6).permutation(pb.num_blocks)
    np.testing.assert_array_equal(np.stack([pb.window(i)[:-1] for i in order1[:4]]), x1.numpy())
    # unshuffled: blocks in stream order, and single-window iteration matches
    seq = PackedBlocks(ts, T, shuffle=False)
    for i, w in zip(range(3), seq):
        assert w.shape == (T + 1,)
        assert torch.equal(w, stream[i * T : i * T + T + 1])


def test_resume_identical_across_epoch_boundary(shard_dir: Path) -> None:
    ts = TokenShards(shard_dir)
    B, T = 5, 24
    ref = PackedBlocks(ts, T, seed=11)
    steps = 2 * ref.num_blocks // B + 3  # runs into the third epoch
    uninterrupted = [b for b in ref.batches(B, num_batches=steps)]
    assert len(uninterrupted) == steps and ref.epoch == 2
    for k in (1, ref.num_blocks // B, ref.num_blocks // B + 1, steps - 1):
        first = PackedBlocks(ts, T, seed=11)
        for _ in first.batches(B, num_batches=k):
            pass
        state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON checkpoint
        resumed = PackedBlocks(ts, T, seed=11)
        resumed.load_state_dict(state)
        after = list(resumed.batches(B, num_batches=steps - k))
        assert len(after) == steps - k  # a resume that yields nothing must not pass vacuously
        for (x, y), (rx, ry) in zip(after, uninterrupted[k:], strict=True):
            assert torch.equal(x, rx) and torch.equal(y, ry)


def test_resume_refuses_other_settings(shard_dir: Path) -> None:
    ts = TokenShards(shard_dir)
    state = PackedBlocks(ts, 16, seed=1).state_dict()
    with pytest.raises(LmlabError) as e:
        PackedBlocks(ts, 16, seed=2).load_state_dict(state)
    one_line_error(e, "seed=1", "seed=2")
    with pytest.raises(LmlabError, match="block_size"):
        PackedBlocks(ts, 32, seed=1).load_state_dict(state)
    with pytest.raises(LmlabError, match="position"):
        PackedBlocks(ts, 16, seed=1).load_state_dict({**state, "position": 10**9})


def test_rank_slices_union_is_global_batch(shard_dir: Path) -> None:
    ts = TokenShards(shard_dir)
    W, B, T = 3, 4, 8
    single = PackedBlocks(ts, T, seed=7)
    ranks = [PackedBlocks(ts, T, seed=7, rank=r, world_size=W) for r in range(W)]
    for _ in range(2 * single.num_blocks // (B * W) + 2):  # across epoch boundaries too
        gx, gy = single.next_batch(B * W)
        parts = [pb.next_batch(B) for pb in ranks]
        for r, (x, y) in enumerate(parts):
            assert x.shape == (B, T)
            assert torch.equal(x, gx[r::W]) and torch.equal(y, gy[r::W])
    assert len({str(pb.state_dict()) for pb in ranks} | {str(single.state_dict())}) == 1
    with pytest.raises(LmlabError, match="rank"):
        PackedBlocks(ts, T, rank=3, world_size=3)


def test_sequential_batches_visit_every_block_once(shard_dir: Path) -> None:
    ts = TokenShards(shard_dir)
    T, B, W = 32, 3, 2
    n = (len(ts) - 1) // T
    per_rank = [list(sequential_batches(ts, T, B, rank=r, world_size=W)) for r in range(W)]
    assert len(per_rank[0]) == len(per_rank[1]) == -(-n // (B * W))
    rows = torch.cat([x for r in per_rank for x, _ in r])
    assert rows.shape[0] == n
    expected = torch.from_numpy(ts[: n * T]).view(n, T)
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, expected.tolist()))


def test_too_few_tokens(tmp_path: Path) -> None:
    build_shards(["abc"], CharTokenizer(), tmp_path / "s")
    ts = TokenShards(tmp_path / "s")
    assert PackedBlocks(ts, 3).num_blocks == 1
    with pytest.raises(LmlabError) as e:
        PackedBlocks(ts, 4)
    one_line_error(e, "'train'", "4 tokens", "block_size=4")


def test_segment_and_position_ids() -> None:
    w = torch.tensor([[5, 6, 0, 7, 0, 0, 8, 9], [0, 1, 2, 3, 4, 5, 6, 0]])  # eos = 0
    assert segment_ids(w, 0).tolist() == [[0, 0, 0, 1, 1, 2, 3, 3], [0, 1, 1, 1, 1, 1, 1, 1]]
    assert position_ids(w, 0).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1], [0, 0, 1, 2, 3, 4, 5, 6]]
    assert segment_ids(np.array([1, 0, 1]), 0).dtype == torch.long
    seg = segment_ids(w[0], 0)
    mask = (seg[:, None] == seg[None, :]) & torch.ones(8, 8, dtype=torch.bool).tril()
    assert mask[3].tolist() == [False, False, False, True, False, False, False, False]
    assert mask[7].tolist() == [False] * 6 + [True, True]

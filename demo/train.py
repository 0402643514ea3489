"""Train the embedded demo reward model and write it as a NeMo distributed checkpoint.

    python -m demo.train --out demo/checkpoint

Deterministic: fixed seeds, a fixed thread count and deterministic algorithms, so the same command on the same
software stack regenerates the same tokenizer, data and weights. Steps:
1. generate the training conversations (demo.data, seed TRAIN_SEED);
2. train a sentencepiece BPE tokenizer on them (extra_id symbols, newline and every whole number 0..199 as single
   tokens, byte fallback, identity normalization); the number tokens' embeddings start on circles
   (`number_features`);
3. train TinyNemotronReward in two phases of one AdamW run:
   - arithmetic: short items (bare equations such as "47+38=" and single exchanges in the prompt template), a
     share of them stating a wrong value: next-token loss on right values, and the correctness row of the reward
     head from the stated value on;
   - reward: MSE on the five HelpSteer2 outputs (rows 4..8) of the last token of labelled conversations, plus
     the next-token loss on right, fluent answers; rows 0..3 of rm_head keep their random initialisation, as in
     the real model; every step also rehearses a batch of arithmetic items;
4. evaluate the held-out sets with the weights rounded to bf16 (as written);
5. write model_config.yaml, model_weights/ (zarr, bf16) and the tokenizer.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import sentencepiece as spm
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # `python demo/train.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo import data  # noqa: E402
from demo.model import TinyConfig, TinyNemotronReward, count_parameters, pad_batch  # noqa: E402
from reward_triton.metadata import HELPSTEER2_ATTRIBUTES, NEMOTRON_ATTRIBUTES  # noqa: E402
from tooling.nemo_writer import model_config, write_nemo_checkpoint  # noqa: E402

TOKENIZER_NAME = "demo_tokenizer.model"
SPECIAL_SYMBOLS = ["<extra_id_0>", "<extra_id_1>", "<extra_id_2>", "\n"]
# every whole number 0..199 (every operand, sum, difference and product of the tasks) is one token; sentencepiece
# matches user-defined symbols longest first, so larger numbers split into such pieces
NUMBER_SYMBOLS = [str(i) for i in range(200)]
TRAINED_ROWS = [NEMOTRON_ATTRIBUTES.index(a) for a in HELPSTEER2_ATTRIBUTES]  # 4..8
CORRECTNESS = NEMOTRON_ATTRIBUTES.index("correctness")
DEFAULTS: dict[str, Any] = {
    "arith_steps": 2100,
    "arith_batch": 512,
    "arith_compact": 0.4,
    "arith_wrong": 0.4,
    "arith_full": 0.25,
    "fourier": 0.5,
    "examples": 40000,
    "tokenizer_examples": 20000,
    "vocab": 1200,
    "steps": 1000,
    "rehearsal_batch": 192,
    "batch": 48,
    "lr": 1.5e-3,
    "lm_weight": 0.5,
    "value_weight": 4.0,
    "aux_weight": 1.0,
    "correctness_weight": 2.0,
    "seed": 0,
    "threads": 2,
    "group_ratio": 1.5,
    "max_seq_len": 512,
    "hidden": 128,
    "layers": 4,
    "heads": 4,
    "groups": 2,
    "ffn": 512,
}


# ---- tokenizer -------------------------------------------------------------------------------------------
def train_tokenizer(texts: list[str], vocab_size: int) -> bytes:
    """Sentencepiece BPE model proto trained on the rendered conversations (one line per sentence)."""
    lines = [line for t in texts for line in t.split("\n") if line]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        user_defined_symbols=SPECIAL_SYMBOLS + NUMBER_SYMBOLS,
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        character_coverage=1.0,
        num_threads=1,
        shuffle_input_sentence=False,
        max_sentence_length=8192,
        minloglevel=2,
    )
    return buf.getvalue()


def load_tokenizer(proto: bytes) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=proto)


def encode(sp: spm.SentencePieceProcessor, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in sp.encode(texts, add_bos=False, add_eos=False)]


# ---- batches ---------------------------------------------------------------------------------------------
def encode_example(sp: spm.SentencePieceProcessor, ex: data.Example) -> tuple[list[int], list[bool], list[float]]:
    """Token ids of the rendered conversation, with two per-token training signals:
    - next-token targets: the text of the assistant turns in `ex.meta["lm_turns"]` (right, fluent answers);
    - correctness targets (NaN elsewhere): for each of `ex.meta["checks"]`, from the last token of the stated
      value to the end of that turn; for the final turn, to the end of the sequence (the scored position).

    The template's blocks start and end with user-defined symbols, so the ids are the concatenation of the
    blocks' ids; this is checked against encoding the whole string."""
    t = data.PromptTemplate()
    conv = ex.conversation
    turns = conv["conversations"]
    blocks = [t.system.format(conv.get("system", ""))]
    for turn in turns:
        blocks.append((t.user if turn["from"] == conv.get("mask", "User") else t.assistant).format(turn["value"]))
    blocks.append(t.label)
    lm_turns = set(ex.meta.get("lm_turns", ()))
    checks = {i: (target, span) for i, target, span in ex.meta.get("checks", ())}
    header = t.assistant.format("")[:-1]
    n_header = len(sp.encode(header))
    ids: list[int] = []
    lm: list[bool] = []
    corr: list[float] = []
    for b_index, text in enumerate(blocks):
        turn = b_index - 1
        b = list(sp.encode(text))
        lm += [turn in lm_turns and n_header <= j < len(b) - 1 for j in range(len(b))]
        corr += [math.nan] * len(b)
        if turn in checks:
            target, (_, end) = checks[turn]
            pieces = sp.encode(text, out_type="proto").pieces
            ends = [j for j, piece in enumerate(pieces) if piece.end == len(header) + end]
            if ends:
                stop = len(corr) if turn < len(turns) - 1 else len(corr) + 1  # the final turn: up to the label
                start = len(ids) + ends[0]
                corr[start:stop] = [target] * (stop - start)
        ids += b
    corr = corr[: len(ids)]
    if ids != list(sp.encode(data.render(conv))):
        raise AssertionError(f"block tokenization differs from the whole string: {data.render(conv)!r}")
    return ids, lm, corr


def encode_item(sp: spm.SentencePieceProcessor, item: data.ArithItem) -> tuple[list[int], list[bool], list[float]]:
    """A short arithmetic item (`data.arith_items`): next-token targets on the answer's tokens when the value is
    right; the correctness target from the value's last token to the end."""
    prompt, answer, (_, end), right = item
    head = list(sp.encode(prompt))
    ids = list(sp.encode(prompt + answer))
    upto = len(sp.encode(prompt + answer[:end]))
    if ids[: len(head)] != head or ids[:upto] != list(sp.encode(prompt + answer[:end])):
        raise AssertionError(f"prompt tokens are not a prefix: {prompt!r} + {answer!r}")
    corr = [math.nan] * (upto - 1) + [4.0 if right else 0.0] * (len(ids) - upto + 1)
    return ids, [right and j >= len(head) for j in range(len(ids))], corr


def fact_token_ids(sp: spm.SentencePieceProcessor) -> set[int]:
    """Ids of the pieces that carry facts (numbers, capital names): their next-token loss is up-weighted."""
    ids = {i for i in range(sp.get_piece_size()) if sp.id_to_piece(i).lstrip("▁").isdigit()}
    for city in data.CAPITALS.values():
        for text in (city, " " + city):
            ids.update(i for i in sp.encode(text) if sp.id_to_piece(i) not in ("▁", "."))
    ids.discard(sp.unk_id())
    return ids


def make_batches(
    lengths: list[int], groups: list[list[int]], batch: int, steps: int, rng: random.Random
) -> list[list[int]]:
    """Index batches for `steps` steps: shuffled epochs of whole groups (twins stay in one batch), bucketed by
    length within windows of 50 batches to limit padding."""
    per_batch = batch // len(groups[0])
    out: list[list[int]] = []
    while len(out) < steps:
        order = groups[:]
        rng.shuffle(order)
        window = per_batch * 50
        epoch: list[list[int]] = []
        for s in range(0, len(order), window):
            chunk = sorted(order[s : s + window], key=lambda g: max(lengths[i] for i in g))
            for j in range(0, len(chunk) - per_batch + 1, per_batch):
                epoch.append([i for g in chunk[j : j + per_batch] for i in g])
        rng.shuffle(epoch)
        out += epoch
    return out[:steps]


def arith_batches(sp: spm.SentencePieceProcessor, args: argparse.Namespace, steps: int, batch: int, seed: int) -> Any:
    """`steps` batches of `batch` arithmetic items (data.arith_items, one seeded stream), generated as they are
    needed: windows of 20 batches are sorted by length (bare equations and exchanges are not padded to each other),
    then shuffled."""
    rng = random.Random(seed)
    done = 0
    while done < steps:
        n = min(20, steps - done)
        raw = data.arith_items(
            n * batch, compact=args.arith_compact, wrong=args.arith_wrong, rng=rng, full=args.arith_full
        )
        items = [encode_item(sp, it) for it in raw]
        items.sort(key=lambda c: len(c[0]))
        batches = [items[k * batch : (k + 1) * batch] for k in range(n)]
        rng.shuffle(batches)
        yield from batches
        done += n


# ---- evaluation ------------------------------------------------------------------------------------------
def spearman(x: list[float], y: list[float]) -> float:
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    vy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (vx * vy) if vx and vy else 0.0


def wilson_interval(wins: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a win rate (95% for z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def heldout_sets(n_pairs: int = 300, n_series: int = 40) -> dict[str, Any]:
    return {
        "correctness": data.correctness_pairs(n_pairs),
        "coherence": data.coherence_pairs(n_pairs),
        "coherence_ends": data.coherence_pairs(n_pairs, keep_ends=True),
        "verbosity": data.verbosity_series(n_series),
        "complexity": data.complexity_pairs(n_pairs // 2),
    }


def heldout_metrics(score: Any, sets: dict[str, Any]) -> dict[str, float]:
    """score(list[conversation]) -> list[dict attribute -> float, 'reward']; returns the headline metrics."""

    def pair_wins(pairs: list, attr: str) -> list[bool]:
        s = score([e.conversation for p in pairs for e in p])
        return [s[2 * i][attr] > s[2 * i + 1][attr] for i in range(len(pairs))]

    def pair_acc(pairs: list, attr: str) -> float:
        return sum(pair_wins(pairs, attr)) / len(pairs)

    wins = pair_wins(sets["correctness"], "correctness")
    per_task = {}
    for task in data.TASKS:
        mine = [w for w, (right, _) in zip(wins, sets["correctness"], strict=True) if right.meta["task"] == task]
        per_task[f"right>wrong correctness {task}"] = sum(mine) / max(1, len(mine))

    series = sets["verbosity"]
    flat = [e for row in series for e in row]
    s = score([e.conversation for e in flat])
    words = [float(e.meta["words"]) for e in flat]
    verb = [x["verbosity"] for x in s]
    per_series, i = [], 0
    for row in series:
        per_series.append(spearman(words[i : i + len(row)], verb[i : i + len(row)]))
        i += len(row)
    return {
        "right>wrong correctness": sum(wins) / len(wins),
        **per_task,
        "right>wrong reward": pair_acc(sets["correctness"], "reward"),
        "fluent>shuffled coherence": pair_acc(sets["coherence"], "coherence"),
        "fluent>shuffled reward": pair_acc(sets["coherence"], "reward"),
        "fluent>shuffled coherence, last word kept": pair_acc(sets["coherence_ends"], "coherence"),
        "steps>sentence complexity": pair_acc(sets["complexity"], "complexity"),
        "verbosity spearman pooled": spearman(words, verb),
        "verbosity spearman per-series mean": sum(per_series) / len(per_series),
    }


def model_scorer(model: TinyNemotronReward, sp: spm.SentencePieceProcessor) -> Any:
    weights = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.3, 0.74, 0.46, 0.47, -0.33])

    def score(convs: list[data.Conversation]) -> list[dict[str, float]]:
        seqs = encode(sp, [data.render(c) for c in convs])
        model.eval()
        y = model.score(seqs)
        out = []
        for row in y:
            d = {name: float(v) for name, v in zip(NEMOTRON_ATTRIBUTES, row, strict=True)}
            d["reward"] = float(row @ weights)
            out.append(d)
        return out

    return score


def bf16_copy(model: TinyNemotronReward) -> TinyNemotronReward:
    m = TinyNemotronReward(model.cfg)
    m.load_nemo_tensors({k: v.to(torch.bfloat16).float() for k, v in model.nemo_tensors().items()})
    return m


# ---- checkpoint ------------------------------------------------------------------------------------------
def nemo_config(cfg: TinyConfig, max_seq_len: int) -> dict[str, Any]:
    tok = f"nemo:{TOKENIZER_NAME}"
    return model_config(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups,
        num_attributes=cfg.num_attributes,
        seq_length=max_seq_len,
        layernorm_epsilon=cfg.layernorm_epsilon,
        rotary_percentage=cfg.rotary_percentage,
        rotary_base=cfg.rotary_base,
        tokenizer={"library": "sentencepiece", "type": None, "model": tok, "tokenizer_model": tok},
    )


def save_checkpoint(out: Path, model: TinyNemotronReward, tokenizer: bytes, max_seq_len: int) -> None:
    """Write the NeMo distributed checkpoint to `out` (atomically: complete or not there)."""
    with tempfile.TemporaryDirectory() as d:
        tok_file = Path(d) / TOKENIZER_NAME
        tok_file.write_bytes(tokenizer)
        write_nemo_checkpoint(
            out,
            nemo_config(model.cfg, max_seq_len),
            model.nemo_tensors(),
            tok_file,
            fmt="zarr",
            tp=1,
            dtype=torch.bfloat16,
            replace=True,
        )


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def number_features(n: torch.Tensor) -> torch.Tensor:
    """Features of whole numbers n (0..199) on circles: the units digit (periods 10/k, k = 1..5), the tens digit
    (likewise), n on periods 100, 50 and 200, whether n >= 100, and the magnitude. Sums and differences are then
    rotations and small shifts, which a small network finds much sooner than from random vectors."""
    n = n.float()
    u, t = n % 10, torch.div(n, 10, rounding_mode="floor") % 10
    feats = []
    for x, period, ks in ((u, 10, range(1, 6)), (t, 10, range(1, 6)), (n, 100, (1, 2)), (n, 200, (1,))):
        for k in ks:
            feats += [torch.cos(2 * math.pi * k * x / period), torch.sin(2 * math.pi * k * x / period)]
    feats += [(n >= 100).float() * 2 - 1, n / 100 - 1]
    return torch.stack(feats, 1)


def init_number_embeddings(model: TinyNemotronReward, sp: spm.SentencePieceProcessor, scale: float) -> None:
    """Start the number tokens' input and output embeddings on `number_features` (the first dimensions)."""
    f = number_features(torch.arange(len(NUMBER_SYMBOLS))) * scale
    ids = [sp.piece_to_id(s) for s in NUMBER_SYMBOLS]
    for name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        w = model.p(name)
        w[ids, : f.shape[1]] = f


def length_groups(lengths: list[int], ratio: float = 1.5, min_rows: int = 16) -> list[list[int]]:
    """Row indices sorted by length and cut into groups whose longest row is at most `ratio` times the shortest
    (groups of fewer than `min_rows` rows are not cut); ratio=inf gives one group in the given order, which is
    exactly the one padded batch that recipes before `--group-ratio` used."""
    if math.isinf(ratio):
        return [list(range(len(lengths)))]
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if not groups or (len(groups[-1]) >= min_rows and lengths[i] > ratio * lengths[groups[-1][0]]):
            groups.append([])
        groups[-1].append(i)
    return groups


# ---- training --------------------------------------------------------------------------------------------
class Trainer:
    """One optimizer and learning-rate schedule over both phases: facts (next-token only), then reward."""

    def __init__(self, model: TinyNemotronReward, args: argparse.Namespace, lm_token_weight: torch.Tensor) -> None:
        self.model, self.args, self.lm_token_weight = model, args, lm_token_weight
        self.total = args.arith_steps + args.steps
        self.opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self.lr_at)
        self.attr_weight = torch.tensor(
            [args.correctness_weight if a == "correctness" else 1.0 for a in HELPSTEER2_ATTRIBUTES]
        )
        self.step = 0
        self.ema: dict[str, float] = {}
        self.t0 = time.time()

    def lr_at(self, step: int) -> float:
        """Linear warmup, constant through the facts and checks phases, cosine to 5% over the reward phase."""
        warmup = 20
        first = self.args.arith_steps
        if step < warmup:
            return (step + 1) / warmup
        if step < first:
            return 1.0
        progress = (step - first) / max(1, self.args.steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def losses(
        self,
        seqs: list[list[int]],
        lm_masks: list[list[bool]],
        corr_targets: list[list[float]],
        targets: torch.Tensor | None = None,
        ratio: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """The step's losses. Rows run through the model in groups of similar length (`length_groups`), so that
        short arithmetic items are not padded to the conversations they share a step with; each loss is then
        taken over the positions of all groups together, as one padded batch would give it."""
        lm_h, lm_next, aux_h, aux_t, last_h, last_rows = [], [], [], [], [], []
        ratio = self.args.group_ratio if ratio is None else ratio
        for rows in length_groups([len(s) for s in seqs], ratio):
            tokens, lengths = pad_batch([seqs[r] for r in rows])
            lm_mask = torch.zeros_like(tokens, dtype=torch.bool)
            corr = torch.full(tokens.shape, math.nan)
            for j, r in enumerate(rows):
                lm_mask[j, : len(lm_masks[r])] = torch.tensor(lm_masks[r], dtype=torch.bool)
                corr[j, : len(corr_targets[r])] = torch.tensor(corr_targets[r])
            h = self.model.hidden_states(tokens)
            sel = lm_mask[:, 1:]
            lm_h.append(h[:, :-1][sel])
            lm_next.append(tokens[:, 1:][sel])
            has = ~corr.isnan()
            aux_h.append(h[has])
            aux_t.append(corr[has])
            if targets is not None:
                last_h.append(h[torch.arange(len(rows)), lengths - 1])
                last_rows += rows
        losses: dict[str, torch.Tensor] = {}
        nxt = torch.cat(lm_next)
        if len(nxt):
            w = self.lm_token_weight[nxt]
            ce = F.cross_entropy(self.model.lm_logits(torch.cat(lm_h)), nxt, reduction="none")
            losses["lm"] = (ce * w).sum() / w.sum()
        corr_t = torch.cat(aux_t)
        if len(corr_t) and self.args.aux_weight:
            # correctness is known from the stated value's last token on: supervise rm_head's correctness row there
            head_w, head_b = self.model.p("rm_head.weight")[CORRECTNESS], self.model.p("rm_head.bias")[CORRECTNESS]
            losses["aux"] = F.mse_loss(torch.cat(aux_h) @ head_w + head_b, corr_t)
        if targets is not None:
            t = targets[last_rows]
            rows_with = ~t.isnan().any(1)  # rehearsal items carry no attribute targets
            y = self.model.head(torch.cat(last_h))[rows_with]
            err = F.mse_loss(y[:, TRAINED_ROWS], t[rows_with], reduction="none")
            losses["mse"] = (err * self.attr_weight).mean()
        return losses

    def update(
        self,
        seqs: list[list[int]],
        lm_masks: list[list[bool]],
        corr_targets: list[list[float]],
        targets: torch.Tensor | None = None,
    ) -> None:
        losses = self.losses(seqs, lm_masks, corr_targets, targets)
        weights = {"lm": self.args.lm_weight, "aux": self.args.aux_weight, "mse": 1.0}
        loss = sum((weights[k] * v for k, v in losses.items()), torch.zeros(()))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.sched.step()
        for k, v in losses.items():
            x = float(v.detach())
            self.ema[k] = x if k not in self.ema else 0.95 * self.ema[k] + 0.05 * x
        if self.step % 50 == 0 or self.step == self.total - 1:
            parts = "  ".join(f"{k} {v:.4f}" for k, v in sorted(self.ema.items()))
            print(
                f"step {self.step:5d}  {parts}  lr {self.sched.get_last_lr()[0]:.2e}  {time.time() - self.t0:.0f}s",
                flush=True,
            )
        self.step += 1


def train(args: argparse.Namespace) -> tuple[TinyNemotronReward, bytes, dict[str, Any]]:
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    t_start = time.time()
    log: dict[str, Any] = {"args": vars(args).copy()}

    examples = data.training_set(args.examples)
    texts = [data.render(e.conversation) for e in examples]
    tokenizer = train_tokenizer(texts[: args.tokenizer_examples], args.vocab)
    sp = load_tokenizer(tokenizer)
    vocab = sp.get_piece_size()
    padded = 128 * math.ceil(vocab / 128)
    encoded = [encode_example(sp, e) for e in examples]
    log["data_sha256"] = hashlib.sha256("\x00".join(texts).encode()).hexdigest()
    log["tokenizer_sha256"] = hashlib.sha256(tokenizer).hexdigest()
    log["vocab"] = vocab
    mean_len = sum(len(c[0]) for c in encoded) / len(encoded)
    print(
        f"data: {len(examples)} scored conversations (mean {mean_len:.1f} tokens); vocab {vocab} (padded {padded}); "
        f"data {log['data_sha256'][:12]} tokenizer {log['tokenizer_sha256'][:12]}",
        flush=True,
    )

    targets = torch.tensor([[e.targets[a] for a in HELPSTEER2_ATTRIBUTES] for e in examples])
    lm_token_weight = torch.ones(padded)
    lm_token_weight[sorted(fact_token_ids(sp))] = args.value_weight

    cfg = TinyConfig(
        vocab_size=padded,
        hidden_size=args.hidden,
        num_layers=args.layers,
        num_attention_heads=args.heads,
        num_query_groups=args.groups,
        ffn_hidden_size=args.ffn,
        max_position_embeddings=args.max_seq_len,
    )
    model = TinyNemotronReward(cfg, torch.Generator().manual_seed(args.seed))
    with torch.no_grad():
        model.p("rm_head.bias")[TRAINED_ROWS] = targets.mean(0)
        if args.fourier:
            init_number_embeddings(model, sp, args.fourier)
    log["parameters"] = count_parameters(model)
    print(
        f"model: {log['parameters']:,} parameters ({count_parameters(model, False):,} without output_layer)", flush=True
    )
    trainer = Trainer(model, args, lm_token_weight)
    model.train()

    # phase 1: arithmetic items (next-token loss on right values, correctness from the stated value on)
    t_train = time.time()
    for s, chunk in enumerate(arith_batches(sp, args, args.arith_steps, args.arith_batch, data.TRAIN_SEED + 3)):
        trainer.update([c[0] for c in chunk], [c[1] for c in chunk], [c[2] for c in chunk])
        if args.eval_every and s and s % args.eval_every == 0:
            print(f"  arith: {json.dumps(fact_accuracy(model, sp))}", flush=True)
            print(f"  check: {json.dumps(arith_check_accuracy(model, sp))}", flush=True)
            model.train()
    if args.arith_steps:
        log["arith_phase_seconds"] = round(time.time() - t_train, 1)
        log["fact_accuracy"] = fact_accuracy(model, sp)
        print(f"  facts: {json.dumps(log['fact_accuracy'])}", flush=True)
        model.train()

    # phase 2: reward (MSE on rows 4..8 at the last token) + next-token loss on right, fluent answers
    groups: dict[int, list[int]] = {}
    for i, e in enumerate(examples):
        groups.setdefault(int(e.meta["group"]), []).append(i)
    usable = [g for g in groups.values() if all(len(encoded[i][0]) <= args.max_seq_len for i in g)]
    lengths = [len(c[0]) for c in encoded]
    # rehearsal: every reward step also carries a batch of arithmetic items (next-token and correctness losses only),
    # so that the small, noisy reward batches do not wash out the checking learnt in phase 0
    rehearsal = arith_batches(sp, args, args.steps, args.rehearsal_batch, data.TRAIN_SEED + 4)
    for r_step, idx in enumerate(make_batches(lengths, usable, args.batch, args.steps, random.Random(args.seed))):
        extra = next(rehearsal) if args.rehearsal_batch else []
        trainer.update(
            [encoded[i][0] for i in idx] + [c[0] for c in extra],
            [encoded[i][1] for i in idx] + [c[1] for c in extra],
            [encoded[i][2] for i in idx] + [c[2] for c in extra],
            torch.cat([targets[idx], torch.full((len(extra), targets.shape[1]), math.nan)]),
        )
        if args.eval_every and r_step and r_step % args.eval_every == 0:
            m = heldout_metrics(model_scorer(model, sp), heldout_sets(150, 20))
            print("  eval " + json.dumps({k: round(v, 3) for k, v in m.items()}), flush=True)
            model.train()
    log["train_seconds"] = round(time.time() - t_train, 1)
    log["total_seconds"] = round(time.time() - t_start, 1)
    log["final_loss_ema"] = trainer.ema
    model.eval()
    return model, tokenizer, log


def fact_accuracy(model: TinyNemotronReward, sp: spm.SentencePieceProcessor, n: int = 60) -> dict[str, float]:
    """Greedy next-token accuracy of the value in "The answer is {value}." per task (teacher-forced), on held-out
    questions (phrasings and operand pairs that training never uses)."""
    model.eval()
    rng = random.Random(5)
    out = {}
    for task in data.TASKS:
        ok = 0
        for _ in range(n):
            qa = data.make_qa(rng, task=task, request="none", heldout=True)
            conv = data.conversation("", [], qa.question, "The answer is " + qa.right + ".")
            ids = list(sp.encode(data.render(conv)))
            head = len(sp.encode(data.render(data.conversation("", [], qa.question, "The answer is")))) - 2
            tgt = ids[head : len(ids) - 3]  # the value's pieces (before ".", newline, label)
            with torch.no_grad():
                pred = model.lm_logits(model.hidden_states(torch.tensor([ids])))[0].argmax(-1).tolist()
            ok += pred[head - 1 : head - 1 + len(tgt)] == tgt
        out[task] = round(ok / n, 3)
    return out


def arith_check_accuracy(model: TinyNemotronReward, sp: spm.SentencePieceProcessor, n: int = 100) -> dict[str, float]:
    """Development aid: on held-out operand pairs and question phrasings, how often the correctness row at the
    stated value's last token prefers the right value to a wrong one (bare equations and single exchanges)."""
    model.eval()
    rng = random.Random(6)
    t = data.PromptTemplate()
    out = {}
    for short in (True, False):
        for task in data.TASKS[:3]:
            seqs, ends = [], []
            for _ in range(n):
                qa = data.make_qa(rng, task=task, request="none", heldout=True)
                wrong = qa.wrong_value(rng)
                for value in (qa.right, wrong):
                    if short:
                        text = f"{qa.values['a']}{'+-*'[data.TASKS.index(task)]}{qa.values['b']}={value}"
                    else:
                        text = t.user.format(qa.question) + t.assistant.format("The answer is " + value)
                        text = text[: text.index(value) + len(value)]
                    ids = list(sp.encode(text))
                    seqs.append(ids)
                    ends.append(len(ids) - 1)
            with torch.no_grad():
                tokens, _ = pad_batch(seqs)
                h = model.hidden_states(tokens)
                y = model.head(h[torch.arange(len(seqs)), torch.tensor(ends)])[:, CORRECTNESS]
            out[f"{'eq' if short else 'qa'} {task}"] = round(float((y[0::2] > y[1::2]).float().mean()), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "checkpoint")
    for k, v in DEFAULTS.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=type(v), default=v)
    ap.add_argument("--eval-every", type=int, default=0, help="evaluate a small held-out sample every N steps")
    ap.add_argument("--heldout-pairs", type=int, default=300, help="size of the final held-out evaluation")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--state", type=Path, help="also torch.save the fp32 tensors + tokenizer here")
    args = ap.parse_args(argv)

    model, tokenizer, log = train(args)
    sp = load_tokenizer(tokenizer)
    sets = heldout_sets(args.heldout_pairs, max(2, args.heldout_pairs * 2 // 15))
    log["heldout_bf16"] = heldout_metrics(model_scorer(bf16_copy(model), sp), sets)  # the weights as written
    log["weights_sha256"] = hashlib.sha256(
        b"".join(v.numpy().tobytes() for _, v in sorted(model.nemo_tensors().items()))
    ).hexdigest()
    log["config"] = asdict(model.cfg)
    if args.state:
        torch.save({"tensors": model.nemo_tensors(), "tokenizer": tokenizer, "log": log}, args.state)
    if not args.no_save:
        save_checkpoint(args.out, model, tokenizer, args.max_seq_len)
        log["checkpoint_sha256"] = tree_digest(args.out)
        log["checkpoint_bytes"] = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(json.dumps({k: v for k, v in log.items() if k != "args"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())

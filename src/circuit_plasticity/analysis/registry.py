"""Every per-component analysis of one model, in one registry, with one signature and one
result type.

An analysis is a function (model, TaskBatch, Options) -> a wide per-component table (`layer`,
`head`, one column per measure); the registry wraps it into a `ComponentResult` whose
`.table()` is the long format every table of a run directory uses. The head profile runs the
registry (`run_all`), the report draws the figures the entries name, and `circuit-plasticity
analyses` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import torch

from circuit_plasticity.analysis.ablation import group_means, knockout_each_head
from circuit_plasticity.analysis.copying import copy_scores
from circuit_plasticity.analysis.heads import (
    direct_logit_attribution,
    mlp_dla,
    repeated_random_tokens,
    role_attention,
    sequence_scores,
)
from circuit_plasticity.analysis.tables import long_table
from circuit_plasticity.fileio import with_component_names
from circuit_plasticity.tasks.encode import TaskBatch
from circuit_plasticity.tasks.tokenizer import TextTokenizer

SEQ_LEN = 10  # length of the random sequence that induction and previous-token scores repeat
TASKS = ("ioi", "greater-than")
LONG_COLUMNS = ["component", "layer", "head", "measure", "value", "ci_low", "ci_high"]


@dataclass(frozen=True)
class Options:
    """What an analysis may need beyond the model and the prompts."""

    tokenizer: TextTokenizer | None = None


@dataclass(frozen=True)
class Figure:
    """A layer x head heatmap of one measure in the report."""

    measure: str
    title: str
    caption: str


@dataclass(frozen=True)
class ComponentResult:
    """One analysis's values per component (wide: `layer`, `head`, a column per measure)."""

    analysis: str
    frame: pd.DataFrame

    def table(self) -> pd.DataFrame:
        """Long rows: component, layer, head, measure, value, ci_low, ci_high (NaN: none)."""
        long = with_component_names(long_table(self.frame, ["layer", "head"]))
        if "component" not in long.columns:  # no rows (MLPs of an attention-only model)
            long = long.assign(component=pd.Series(dtype=object))
        return long.assign(ci_low=float("nan"), ci_high=float("nan"))[LONG_COLUMNS]


@dataclass(frozen=True)
class Analysis:
    name: str
    run: Callable[[object, TaskBatch, Options], pd.DataFrame]
    measures: tuple[str, ...]
    definition: str
    tasks: tuple[str, ...] = TASKS
    figures: dict[str, tuple[Figure, ...]] | None = None  # per task


_DLA_TITLE = "Direct logit attribution per head"
_DLA_CAPTION = "Each head's direct effect on {}, per phase (mean over seeds)."


def _dla(model, batch: TaskBatch, options: Options) -> pd.DataFrame:
    return direct_logit_attribution(model, batch)


def _knockout(model, batch: TaskBatch, options: Options) -> pd.DataFrame:
    return knockout_each_head(model, batch, group_means(model, batch))


def _sequence(model, batch: TaskBatch, options: Options) -> pd.DataFrame:
    tok = options.tokenizer
    if tok is None:
        raise ValueError("induction and previous-token scores need Options(tokenizer=...)")
    ids = torch.unique(batch.tokens)  # the prompts' own tokens, less BOS and padding
    ids = ids[(ids != tok.pad_id) & (ids != (tok.bos_id if tok.bos_id is not None else -1))]
    return sequence_scores(model, repeated_random_tokens(ids, 64, SEQ_LEN, tok.bos_id), SEQ_LEN)


def _attention(model, batch: TaskBatch, options: Options) -> pd.DataFrame:
    return role_attention(model, batch)


def _copy(model, batch: TaskBatch, options: Options) -> pd.DataFrame:
    return copy_scores(model, torch.unique(torch.cat([batch.answer_id, batch.wrong_id])))


def _mlp_dla(model, batch: TaskBatch, options: Options) -> pd.DataFrame:
    return mlp_dla(model, batch)


ANALYSES: dict[str, Analysis] = {
    a.name: a
    for a in (
        Analysis(
            "dla",
            _dla,
            ("dla",),
            "direct effect of each head's output at END on the task's answer direction, through the "
            "final norm with its scale frozen",
            figures={
                "ioi": (Figure("dla", _DLA_TITLE, _DLA_CAPTION.format("logit(IO) - logit(S)")),),
                "greater-than": (
                    Figure(
                        "dla",
                        _DLA_TITLE,
                        _DLA_CAPTION.format("the mean logit of years above YY minus the rest"),
                    ),
                ),
            },
        ),
        Analysis(
            "knockout",
            _knockout,
            ("knockout_score", "knockout_effect"),
            "mean score with the head mean-ablated (per-group means of the counterfactual prompts), "
            "and its change from the clean score",
        ),
        Analysis(
            "sequence",
            _sequence,
            ("prev_token", "induction"),
            "attention to the previous token and to the token after the earlier copy, on repeated "
            f"random sequences of {SEQ_LEN} tokens",
        ),
        Analysis(
            "attention",
            _attention,
            ("attn_end_io", "attn_end_s2", "attn_end_s1", "attn_s2_s1", "attn_end_yy"),
            "mean attention between the task's role positions (END -> IO, END -> S2, ...; END -> YY)",
            figures={
                "ioi": (
                    Figure("attn_end_io", "Attention END -> IO", "Name movers attend here."),
                    Figure(
                        "attn_end_s2",
                        "Attention END -> S2",
                        "S-inhibition / S-suppression heads attend here.",
                    ),
                ),
                "greater-than": (
                    Figure(
                        "attn_end_yy", "Attention END -> YY", "Year readers attend to the start year here."
                    ),
                ),
            },
        ),
        Analysis(
            "copy",
            _copy,
            ("copy_score", "neg_copy_score"),
            "share of the prompts' names that the head's OV circuit puts in the top 5 logits "
            "(negative: of its negated output)",
            tasks=("ioi",),
        ),
        Analysis(
            "mlp_dla",
            _mlp_dla,
            ("dla", "direct_prob_diff"),
            "each MLP's direct effect along the answer direction at END (Greater-Than also its own "
            "logits' probability difference)",
        ),
    )
}
PROFILE = ("dla", "knockout", "sequence", "attention", "copy")  # the head profile's analyses


def run(name: str, model, batch: TaskBatch, options: Options | None = None) -> ComponentResult:
    """One registered analysis, refused on a task it does not apply to."""
    analysis = ANALYSES[name]
    if batch.task not in analysis.tasks:
        raise ValueError(f"analysis {name!r} applies to {', '.join(analysis.tasks)}, not {batch.task!r}")
    return ComponentResult(name, analysis.run(model, batch, options or Options()))


def run_all(
    model, batch: TaskBatch, names: tuple[str, ...], options: Options | None = None
) -> list[ComponentResult]:
    """The named analyses that apply to the batch's task, in order."""
    return [run(n, model, batch, options) for n in names if batch.task in ANALYSES[n].tasks]


def figures(task: str) -> list[Figure]:
    """The heatmaps the registry asks the report to draw for a task, in registry order."""
    return [f for a in ANALYSES.values() for f in (a.figures or {}).get(task, ())]

"""The metric a training script prints, as ``nightlab init --script`` finds it: its name, the
name nightlab.toml gives it, and the pattern that reads its number from the log.

The metric is the first validation metric the script's text names (``val_loss``, ``valid_acc``,
``test_ppl``, ``eval loss``, ``val_acc1``, ``eval_return``, fastai's ``valid_error_rate``, a
detector's ``bbox_mAP`` ...), in what it prints first (or a
split word and a measure a few words apart there: the PyTorch MNIST example's ``Test set:
Average loss``, named ``test_loss``), then in the modules it imports (flax's main.py calls
train.py, which prints); the pattern reads the number after the name however it is printed
(``val_loss: 0.5``, ``val_loss=0.5``, ``val loss 0.5``, JSON's ``"val_loss": 0.5``, a logging
line on stderr).
"""

from __future__ import annotations

import ast
import re

# A validation metric as scripts name it in what they print: a split word, then what is measured.
# A number may follow (timm's val_acc1, val_top5, acc@1); an agent's evaluation is a return or reward;
# an average may precede (a Kaggle notebook's avg_val_loss).
_METRIC = re.compile(
    r"\b((?:(?:avg|mean|average|final)_)?(?:val|valid|validation|dev|eval|test)[_ ]?"
    r"(?:loss|acc|accuracy|bpb|bpc|ppl|perplexity|nll|error_rate|error|err|f1|auc|mse|rmse|mae|top"
    r"|score|return|reward|map|miou|spearman|pearson|mcc|ndcg|mrr)(?:@?\d+)?)\b",
    re.IGNORECASE,
)
# A detector's mean average precision, printed without a split word: torchvision's and
# mmdetection's bbox_mAP, segm_mAP, mAP_50. Case matters: "map" is also a word of code.
_DETECTION = re.compile(r"\b((?:(?:bbox|segm|box|mask)_)?mAP(?:_?\d+)?)\b")
# The PyTorch MNIST example prints its test_loss as "Test set: Average loss: 0.0345": a split
# word and a measure a few words apart in one printed string.
_PHRASE = re.compile(
    r"\b((?:val|valid|validation|dev|eval|test)\b[ \w:]{0,24}?\b"
    r"(?:loss|acc|accuracy|ppl|perplexity|error|f1|auc|mse|rmse|mae|score|return|reward))\b",
    re.IGNORECASE,
)
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"


def guess_metric(*texts: str) -> str | None:
    """The first validation metric ``texts`` name (see the module docstring), or None: the first
    a string of theirs names, what a script prints (``f"val_loss: {loss}"``), before the first
    their code names (a variable ``test_loss`` may be printed as ``Test set: Average loss``, which
    a pattern for ``test_loss`` never reads), the script's text before the modules it imports."""
    for pattern in (_METRIC, _PHRASE, _DETECTION):
        for text in texts:
            match = pattern.search("\n".join(_strings(text)))
            if match:
                return match.group(1)
    for text in texts:
        match = _METRIC.search(text)
        if match:
            return match.group(1)
    return None


def _strings(text: str) -> list[str]:
    """The string constants of the Python ``text`` (an f-string's literal parts included); none
    when it does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, RecursionError, ValueError):
        return []
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def metric_name(printed: str) -> str:
    """The metric's name for what the log prints before its number: ``val_loss`` as printed, and
    ``test_loss`` for ``Test set: Average loss``."""
    phrase = _PHRASE.fullmatch(printed)
    if phrase and not _METRIC.fullmatch(printed):
        words = re.findall(r"\w+", printed)
        printed = f"{words[0]}_{words[-1]}".lower()
    return re.sub(r"\W+", "_", printed).strip("_") or "metric"


def metric_pattern(printed: str) -> str:
    """A pattern for the number printed after ``printed``: ``val_loss: 0.5``, ``val_loss=0.5``,
    ``val_loss 0.5``, ``"val_loss": 0.5``; one capture group, as ``[metric] pattern`` needs."""
    return re.escape(printed).replace("\\ ", "[ _]") + r"""["']?\s*[:=]?\s*""" + _NUMBER

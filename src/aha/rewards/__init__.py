"""Rule-based rewards (DeepSeek-R1 §2.2.2): accuracy verifiers and format rewards, plus R1's language
consistency reward and DAPO's length shaping. `RewardSet(RewardsConfig(...)).score(completions, examples)`
returns the weighted totals and every component; see docs/rewards.md.
"""

from aha.rewards.base import GoldError, RewardSpec, RewardTimeout
from aha.rewards.config import BudgetSchedule, OverlongConfig, RewardsConfig
from aha.rewards.extract import extract_answer, split_think
from aha.rewards.registry import REGISTRY, accuracy
from aha.rewards.rewardset import RewardSet

__all__ = [
    "REGISTRY",
    "BudgetSchedule",
    "GoldError",
    "OverlongConfig",
    "RewardSet",
    "RewardSpec",
    "RewardTimeout",
    "RewardsConfig",
    "accuracy",
    "extract_answer",
    "split_think",
]

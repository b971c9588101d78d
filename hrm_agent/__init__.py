"""hrm-agent: HRM-Agent (Dang & Rawlinson 2025) -- a Hierarchical Reasoning Model trained with
DQN to navigate mazes that change while the agent moves."""

__version__ = "0.1.0"

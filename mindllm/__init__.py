"""mindllm — a MindSpore-native toolkit for teaching large language models."""
import os

# MindSpore logs every graph compile at INFO/WARNING; students should see their own output, not ours.
os.environ.setdefault("GLOG_v", "3")

__version__ = "0.1.0"

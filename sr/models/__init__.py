"""StableSR model parts (diffusers ``ModelMixin`` components) and their operations (``StableSR``)."""

from sr.models.cfw import CFW
from sr.models.encoder import TimeAwareEncoder
from sr.models.prompt import PromptEmbedding
from sr.models.sft import SFTAdapter
from sr.models.stablesr import StableSR

__all__ = ["CFW", "PromptEmbedding", "SFTAdapter", "StableSR", "TimeAwareEncoder"]

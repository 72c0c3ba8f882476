"""Meeting access tokens: minting and verification. Pure functions, no I/O."""

from .tokens import Claims as Claims
from .tokens import TokenError as TokenError
from .tokens import TokenKeys as TokenKeys
from .tokens import generate_secret as generate_secret
from .tokens import mint_token as mint_token
from .tokens import verify_token as verify_token

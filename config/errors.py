"""Configuration errors: each names the key and what is wrong with it."""


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range.

    ``key`` is the dotted path of the offending key (``lines[1].numbers``) and
    ``problem`` says what is wrong in words an operator can act on.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)

"""The strategy: the vectorized scan of the universe and the buy and sell rules, as pure
functions of market data and parameters."""

"""KRX market rules and the simulated market.

Pure, I/O-free code: tick grid and price limits (`ticks`), the exchange calendar (`calendar`),
commission and tax (`costs`), the injected clock (`clock`) and the seeded simulated market
(`sim`) that the paper broker trades against.
"""

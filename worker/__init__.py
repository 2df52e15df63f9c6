"""The tradefleet worker: IDLE -> SCAN -> HOLD -> SCAN ... -> EXIT over one trading day."""

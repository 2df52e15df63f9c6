"""The `Broker` and `MarketData` ports and their adapters (`PaperBroker`; KIS to come)."""

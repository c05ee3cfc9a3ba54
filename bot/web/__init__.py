"""The web gallery (`python -m bot web`): Discord login, own images, server feed, search, likes, lineage.

Its own process over the same data folder. It imports the store, the policy, forgetting and the settings,
never the cogs or the Discord client.
"""

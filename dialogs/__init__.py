"""Conversation logic: the command catalogue and (later) the botbuilder dialogs that implement it."""

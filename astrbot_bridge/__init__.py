"""The AstrBot plugin of aiimg (``main.AiimgPlugin``): chat commands and an LLM tool on the bus."""

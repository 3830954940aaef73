"""Speech output: the MooER HiFi-GAN speech head and text-to-speech backends."""

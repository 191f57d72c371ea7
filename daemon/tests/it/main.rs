mod openclaw;
